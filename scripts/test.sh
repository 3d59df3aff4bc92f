#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets everything up (scripts/setup.sh --reference) and runs every test: CTest (C++ unit tests,
# the find_package consumer) and pytest (the exporter against transformers, timm); then the model
# and CLI tests a second time with ATen and oneDNN limited to AVX2, as on most AMD servers before
# Zen 4 and most laptops, whatever this machine's CPU is; then the sanitizer legs: CTest under
# ASan + UBSan, every libFuzzer target for a fixed number of executions, and the concurrency tests
# under TSan (docs/RELIABILITY.md). DINOV2_SKIP_SANITIZERS=1 leaves those out.
set -euo pipefail
cd "$(dirname "$0")/.."
# The smoke run of each fuzz target: about 20 s for the model target, under 2 s for the fast ones.
FUZZ_RUNS=${DINOV2_FUZZ_RUNS:-300}
# Free disk after each leg: a full disk shows up as odd failures far from its cause (a CMake
# "cannot create directory", an abort inside torch.jit.save), so the log says how much was left.
disk() {
  echo "== disk after $1: $(df -h --output=avail . | tail -1 | tr -d ' ') free here," \
    "$(df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d ' ') in ${TMPDIR:-/tmp}"
}
disk "nothing yet"
scripts/setup.sh --reference
disk "set-up"
status=0
ctest --test-dir build --output-on-failure -j 2 || status=1
disk "CTest"
(cd tests/python && ../../.venv/bin/python -m pytest -q) || status=1
disk "pytest"

echo "== the model and CLI tests again, limited to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)"
(
  export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
  # Proof that the limits took effect, from each side: the library, PyTorch, and oneDNN itself.
  build/bin/dinov2 --version
  .venv/bin/python - <<'EOF'
import torch

print("PyTorch under the limit: ATen", torch.backends.cpu.get_cpu_capability(),
      "; oneDNN bfloat16 kernels:", torch.ops.mkldnn._is_mkldnn_bf16_supported())
EOF
  ONEDNN_VERBOSE=1 .venv/bin/python -c "import torch; x = torch.ones(4, 8)
torch.ops.mkldnn._linear_pointwise(x, torch.ones(16, 8), torch.ones(16), 'none', [], '')" |
    grep -m1 ',isa:' || echo "oneDNN printed no ISA line"
  limited=0
  # Each [model] test in its own process, as CTest runs them (Catch2 lists them by tag).
  while IFS= read -r name; do
    build/tests/dinov2_tests "$name" >/tmp/dinov2-avx2-test.log 2>&1 ||
      { cat /tmp/dinov2-avx2-test.log; echo "AVX2-limited: FAILED: $name"; limited=1; }
    grep -h "tolerance\|cpu_info:\|unfused fallback" /tmp/dinov2-avx2-test.log | sort -u | sed 's/^/  /' || true
  done < <(build/tests/dinov2_tests "[model]" --list-test-names-only |
    sed '/^$/d;/test cases/d;s/[],[]/\\&/g')
  [ $limited = 0 ] && echo "AVX2-limited: every [model] test case passed"
  (cd tests/python && ../../.venv/bin/python -m pytest -q test_cli_extract.py test_cli_analysis.py) ||
    limited=1
  exit $limited
) || status=1
disk "the AVX2-limited leg"

if [ "${DINOV2_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== ASan + UBSan: CTest; then each fuzz target for $FUZZ_RUNS executions; TSan: [threads]"
  scripts/sanitize.sh address || status=1
  scripts/fuzz.sh all --runs "$FUZZ_RUNS" || status=1
  scripts/sanitize.sh thread || status=1
  disk "the sanitizer legs"
fi
exit $status
