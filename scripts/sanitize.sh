#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds dinov2 with sanitizers (Clang) and runs the tests they watch.
#   scripts/sanitize.sh address   ASan + UBSan: the library, the tool, the unit tests and the
#                                 libFuzzer targets in build-asan/; then every CTest test
#   scripts/sanitize.sh thread    TSan: the library and the unit tests in build-tsan/; then the
#                                 concurrency tests ([threads])
#   --build-only                  configure and build, run nothing (scripts/fuzz.sh uses it)
# Needs scripts/setup.sh first (LibTorch in .venv, the reference data in build/tests/data).
# LibTorch, OpenCV and the other dependencies are not instrumented. ASan, UBSan and LeakSanitizer
# need no suppressions (one runtime option, below, works around a Clang 14 runtime bug); TSan's,
# each with its reason, are in scripts/sanitizers/tsan.supp.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIND="" BUILD_ONLY=0
for arg in "$@"; do
  case $arg in
    address | thread) KIND=$arg ;;
    --build-only) BUILD_ONLY=1 ;;
    *) echo "sanitize.sh: unknown argument $arg (address, thread, --build-only)" >&2; exit 2 ;;
  esac
done
[ -n "$KIND" ] || { echo "usage: scripts/sanitize.sh address|thread [--build-only]" >&2; exit 2; }
log() { printf '\033[1msanitize:\033[0m %s\n' "$*" >&2; }

CLANG=clang++-14
if ! command -v $CLANG >/dev/null || [ ! -d /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux ] ||
  ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  log "installing clang-14 and its sanitizer runtimes"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang-14 libclang-rt-14-dev >/dev/null
fi

TORCH_CMAKE=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
if [ $KIND = address ]; then
  BUILD=build-asan
  # FAISS stays out: with Clang it needs LLVM's OpenMP runtime beside LibTorch's libgomp.
  FLAGS=(-DDINOV2_SANITIZE=address,undefined -DDINOV2_BUILD_FUZZERS=ON -DDINOV2_BUILD_TOOLS=ON
    -DDINOV2_WITH_FAISS=OFF)
  TARGETS=(dinov2_tests dinov2_tool fuzz_image fuzz_model fuzz_head fuzz_safetensors fuzz_npy
    fuzz_text fuzz_weights fuzz_tar)
else
  BUILD=build-tsan
  FLAGS=(-DDINOV2_SANITIZE=thread -DDINOV2_BUILD_FUZZERS=OFF -DDINOV2_BUILD_TOOLS=OFF
    -DDINOV2_WITH_FAISS=OFF)
  TARGETS=(dinov2_tests)
fi
# -O1: the sanitizers' own advice, and a third faster to compile than -O3 with LibTorch's headers.
log "configuring $BUILD/ (clang-14, -fsanitize=$([ $KIND = address ] && echo address,undefined || echo thread))"
cmake -S . -B $BUILD -G Ninja -DCMAKE_CXX_COMPILER=$CLANG -DCMAKE_BUILD_TYPE=Sanitize \
  -DCMAKE_CXX_FLAGS_SANITIZE="-O1" -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" \
  -DDINOV2_PYTHON="$ROOT/.venv/bin/python" -DDINOV2_TESTDATA="$ROOT/build/tests/data" \
  -DDINOV2_BUILD_EXAMPLES=OFF -DDINOV2_BUILD_BENCH=OFF -DDINOV2_INSTALL=OFF "${FLAGS[@]}" >/dev/null
log "building ${TARGETS[*]}"
cmake --build $BUILD -j "$(nproc)" --target "${TARGETS[@]}"
((BUILD_ONLY)) && exit 0

SUPP=$ROOT/scripts/sanitizers
if [ $KIND = address ]; then
  # intercept_tls_get_addr=0: Clang 14's runtime takes a dynamic TLS block that happens to start
  # 16 bytes into a page for a glibc 2.19 block with a header, reads an address and a length from
  # before it, and LeakSanitizer's tracer then dies scanning that range after every test has
  # passed ("Tracer caught signal 11"). The AOTInductor package's shared library, loaded with
  # dlopen, has such blocks; whether one lands there depends on the heap layout, so it came and
  # went with unrelated changes. Off, LeakSanitizer does not scan dynamic TLS: memory reachable
  # only from there would read as a leak, never hide one.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:intercept_tls_get_addr=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  log "CTest under ASan + UBSan"
  ctest --test-dir $BUILD --output-on-failure -j 2 -E '^package\.'
else
  export TSAN_OPTIONS="suppressions=$SUPP/tsan.supp:halt_on_error=1:second_deadlock_stack=1"
  log "the [threads] tests under TSan"
  # TSan needs a fixed memory layout; some kernels randomise mmap more than it can map.
  setarch "$(uname -m)" -R build-tsan/tests/dinov2_tests "[threads]"
fi
