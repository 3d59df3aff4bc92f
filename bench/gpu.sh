#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU benchmark table in one command, for a machine with an NVIDIA GPU (Debian/Ubuntu, Python
# 3 with pip). It builds the library and bench/dinov2_bench against a CUDA PyTorch in build-gpu/,
# exports ViT-B/14 and ViT-L/14 with random weights, and times the model alone at 518 px, batch
# 32, in float32 and bfloat16: the C++ library (dinov2_bench model --device cuda) against
# transformers' Dinov2Model with SDPA attention in eager PyTorch (bench/reference.py model
# --device cuda), same torch build, same weights, same input batch (on the CPU, copied in each
# timed call). Writes out/gpu/GPU_BENCHMARKS.md (and prints it) for docs/BENCHMARKS.md.
#
#   bench/gpu.sh                       the table above (about 6 minutes on an H200, build included)
#   bench/gpu.sh --no-apt              do not install system packages (they are there, or on
#                                      CMAKE_PREFIX_PATH)
#   bench/gpu.sh --python PY           use PY's torch (default: python3's when it sees a GPU,
#                                      else .venv-gpu with torch==2.14.1)
#   bench/gpu.sh --device cpu --size 224 --batch 2 --variants dinov2_vits14
#                                      a smoke run of the same steps without a GPU
#
# Torch: python3's when `import torch; torch.cuda.is_available()` works there (its missing Python
# packages go into .venv-gpu, made with --system-site-packages), else .venv-gpu with torch==2.14.1
# (a CUDA build) from PyPI. TorchConfig.cmake needs the CUDA toolkit (nvcc) of that torch's CUDA
# version: found on PATH, in CUDAToolkit_ROOT or /usr/local/cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS

DEVICE=cuda
SIZE=518
BATCH=32
WARMUP=3
ITERS=10
VARIANTS="dinov2_vitb14 dinov2_vitl14"
DTYPES="float32 bfloat16"
APT=1
PY=""
JOBS=$(nproc)
BUILD=build-gpu
OUTDIR=out/gpu
TORCH_PIN=torch==2.14.1
# The library and dinov2_bench only: a subset of scripts/setup.sh's list (no tests, tools, FAISS).
APT_PACKAGES=(g++ cmake ninja-build python3-venv python3-dev libopencv-dev libeigen3-dev
  libfmt-dev nlohmann-json3-dev libssl-dev)
ARGS=("$@")

usage() { sed -n '3,22p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --no-apt) APT=0 ;;
    --python) PY=$2; shift ;;
    --device) DEVICE=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --batch) BATCH=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --iters) ITERS=$2; shift ;;
    --variants) VARIANTS=$2; shift ;;
    --dtypes) DTYPES=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '\033[1mgpu.sh [%3ds]:\033[0m %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '\033[1mgpu.sh: error:\033[0m %s\n' "$*" >&2; exit 1; }
mkdir -p "$OUTDIR/logs"
LOGS=$ROOT/$OUTDIR/logs

# -- system packages ------------------------------------------------------------------------
if ((APT)) && command -v dpkg-query >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing system packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    if ! { timeout 180 $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 300 $SUDO apt-get install -y -qq "${missing[@]}"; } \
      >"$LOGS/apt.log" 2>&1; then
      log "apt-get failed (see $OUTDIR/logs/apt.log); going on with what is installed"
    fi
  fi
fi

# -- Python with a CUDA torch -----------------------------------------------------------------
has_gpu_torch() {
  if [ "$DEVICE" = cuda ]; then
    "$1" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1
  else
    "$1" -c 'import torch' >/dev/null 2>&1
  fi
}
# Python packages the exporter and the reference need beside torch (import names).
NEEDED="numpy safetensors transformers PIL pytest"
missing_modules() {
  "$1" - "$NEEDED" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None))
EOF
}
# pip's names for import names, one array element each, in PIP_NAMES.
pip_names() { read -ra PIP_NAMES <<<"${1//PIL/pillow}"; }

if [ -z "$PY" ]; then
  if has_gpu_torch python3; then
    PY=python3
  elif [ -x .venv-gpu/bin/python ] && has_gpu_torch .venv-gpu/bin/python; then
    PY=.venv-gpu/bin/python
  fi
fi
if [ -n "$PY" ]; then
  has_gpu_torch "$PY" || die "$PY: torch does not import or sees no GPU (--device $DEVICE)"
  lacking=$(missing_modules "$PY")
  if [ -n "$lacking" ]; then
    log "$PY lacks: $lacking; installing them into .venv-gpu (beside its torch)"
    [ -x .venv-gpu/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu
    pip_names "$lacking"
    .venv-gpu/bin/pip install -q "${PIP_NAMES[@]}" >"$LOGS/pip.log" 2>&1 ||
      die "pip install failed (see $OUTDIR/logs/pip.log)"
    PY=.venv-gpu/bin/python
  fi
else
  log "no torch with CUDA found: creating .venv-gpu with $TORCH_PIN (a few minutes)"
  [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu ||
    die "python3 -m venv failed (install python3-venv)"
  PY=.venv-gpu/bin/python
  pip_names "$NEEDED"
  { .venv-gpu/bin/pip install -q --upgrade pip &&
    .venv-gpu/bin/pip install -q "$TORCH_PIN" "${PIP_NAMES[@]}"; } >"$LOGS/pip.log" 2>&1 ||
    die "pip install failed (see $OUTDIR/logs/pip.log)"
  has_gpu_torch "$PY" ||
    die "$TORCH_PIN is installed but sees no GPU: check nvidia-smi and the driver"
fi
case $PY in
  */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;;  # absolute, venv links kept
  *) PY=$(command -v "$PY") ;;
esac
TORCH_INFO=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")')
TORCH_VERSION=${TORCH_INFO% *}
TORCH_CUDA=${TORCH_INFO#* }
log "python: $PY, torch $TORCH_VERSION (CUDA $TORCH_CUDA)"

# -- configure and build ----------------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
  NVCC=$(command -v nvcc || true)
  for d in "${CUDAToolkit_ROOT:-}" "${CUDA_HOME:-}" /usr/local/cuda; do
    [ -z "$NVCC" ] && [ -n "$d" ] && [ -x "$d/bin/nvcc" ] && NVCC=$d/bin/nvcc
  done
  [ -n "$NVCC" ] || die "no CUDA toolkit (nvcc) found, and TorchConfig.cmake of a CUDA torch \
needs one: install the toolkit of CUDA $TORCH_CUDA (NVIDIA's cuda-toolkit-X-Y package), or set \
CUDAToolkit_ROOT to it"
  NVCC_VERSION=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
  log "nvcc: $NVCC (CUDA $NVCC_VERSION)"
  [ "${NVCC_VERSION%%.*}" = "${TORCH_CUDA%%.*}" ] ||
    log "warning: nvcc is CUDA $NVCC_VERSION but torch was built with CUDA $TORCH_CUDA"
  CUDA_ARGS=(-DCUDAToolkit_ROOT="$(dirname "$(dirname "$NVCC")")")
else
  CUDA_ARGS=()
fi
TORCH_CMAKE=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
GENERATOR=Ninja
command -v ninja >/dev/null || GENERATOR="Unix Makefiles"
command -v cmake >/dev/null || die "cmake is missing (apt-get install cmake, or pip install cmake)"
log "configuring $BUILD/ against $TORCH_CMAKE ($GENERATOR)"
timeout 300 cmake -S . -B "$BUILD" -G "$GENERATOR" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" "${CUDA_ARGS[@]}" -DDINOV2_PYTHON="$PY" \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
  -DDINOV2_BUILD_TESTS=OFF -DDINOV2_BUILD_EXAMPLES=OFF -DDINOV2_BUILD_TOOLS=OFF \
  -DDINOV2_BUILD_BENCH=ON -DDINOV2_INSTALL=OFF >"$LOGS/configure.log" 2>&1 ||
  { tail -n 40 "$LOGS/configure.log" >&2; die "cmake configure failed (see $OUTDIR/logs/configure.log)"; }
log "building dinov2 and dinov2_bench (-j$JOBS)"
timeout 480 cmake --build "$BUILD" -j "$JOBS" --target dinov2_bench >"$LOGS/build.log" 2>&1 ||
  { grep -m 20 -B 2 -A 8 'error' "$LOGS/build.log" >&2 || tail -n 40 "$LOGS/build.log" >&2
    die "build failed (see $OUTDIR/logs/build.log)"; }
BENCH=$ROOT/$BUILD/bench/dinov2_bench

# -- export and measure -----------------------------------------------------------------------
export PYTHONPATH=$ROOT/python${PYTHONPATH:+:$PYTHONPATH}
export PYTHONWARNINGS=ignore
THREADS=$(nproc)
RESULTS=$OUTDIR/results.jsonl
: >"$RESULTS"

# One measurement: runs "$@" under a timeout, appends its JSON line tagged with the row's keys
# (side, variant, dtype, and where the input batch is: cpu, pinned or cuda).
measure() {
  local side=$1 variant=$2 dtype=$3 input=$4 name=$5
  shift 5
  local out
  if out=$(timeout 240 "$@" 2>"$LOGS/$name.err" | tail -n 1) && [ -n "$out" ]; then
    "$PY" - "$side" "$variant" "$dtype" "$input" "$out" >>"$RESULTS" <<'EOF'
import json, sys
side, variant, dtype, where, line = sys.argv[1:]
r = json.loads(line)
r.update(side=side, variant=variant, dtype=dtype, input=where)
print(json.dumps(r))
EOF
    log "  $name: $("$PY" -c 'import json, sys; print("%.1f img/s" % json.loads(sys.argv[1])["images_per_s"])' "$out")"
  else
    log "  $name: FAILED (see $OUTDIR/logs/$name.err)"
    tail -n 5 "$LOGS/$name.err" >&2 || true
  fi
}

for variant in $VARIANTS; do
  model=$OUTDIR/${variant}_float32.pt
  if [ ! -s "$model" ]; then
    log "exporting $variant (random weights, seed 0)"
    timeout 300 "$PY" -m dinov2_export --model "$variant" --weights random --seed 0 \
      --dtype float32 --output "$model" >"$LOGS/export-$variant.log" 2>&1 ||
      { tail -n 20 "$LOGS/export-$variant.log" >&2; die "export of $variant failed"; }
  fi
  for dtype in $DTYPES; do
    common=(--model "$model" --size "$SIZE" --batch "$BATCH" --iters "$ITERS" --warmup "$WARMUP"
      --threads "$THREADS" --dtype "$dtype" --device "$DEVICE")
    log "$variant $dtype, ${SIZE}px batch $BATCH on $DEVICE"
    measure python "$variant" "$dtype" cpu "py-$variant-$dtype" \
      "$PY" bench/reference.py model "${common[@]}"
    measure cpp "$variant" "$dtype" cpu "cpp-$variant-$dtype" "$BENCH" model "${common[@]}"
    if [ "$DEVICE" = cuda ]; then
      # A batch already in pinned memory, and one already on the GPU (the model alone).
      measure cpp "$variant" "$dtype" pinned "cpp-pinned-$variant-$dtype" \
        "$BENCH" model "${common[@]}" --input pinned
      measure python "$variant" "$dtype" cuda "py-gpu-$variant-$dtype" \
        "$PY" bench/reference.py model "${common[@]}" --input cuda
      measure cpp "$variant" "$dtype" cuda "cpp-gpu-$variant-$dtype" \
        "$BENCH" model "${common[@]}" --input cuda
    fi
  done
done

# -- the table --------------------------------------------------------------------------------
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
COMMAND="bench/gpu.sh${ARGS[*]:+ ${ARGS[*]}}"
"$PY" - "$RESULTS" "$OUTDIR/GPU_BENCHMARKS.md" "$COMMAND" "${DRIVER:-unknown}" "$THREADS" \
  "$SIZE" "$BATCH" "$WARMUP" "$ITERS" "$VARIANTS" "$DTYPES" "$((SECONDS - START))" <<'EOF'
import datetime, json, platform, sys
import torch

src, dst, command, driver, threads, size, batch, warmup, iters, variants, dtypes, took = sys.argv[1:]
rows = [json.loads(line) for line in open(src) if line.strip()]
get = lambda side, v, d, where="cpu": next(
    (r for r in rows if (r["side"], r["variant"], r["dtype"], r["input"]) == (side, v, d, where)),
    None,
)
fmt = lambda x, spec=".1f": "-" if x is None else format(x, spec)
gpus = {r.get("gpu") for r in rows if r.get("gpu")}
on_gpu = any(r.get("device") == "cuda" for r in rows)
gpu = ", ".join(sorted(gpus)) or (
    torch.cuda.get_device_name() if torch.cuda.is_available() else "none (a CPU smoke run)"
)
libtorch = {r.get("torch") for r in rows if r["side"] == "cpp" and r.get("torch")}
stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = [
    f"## GPU, {stamp}",
    "",
    f"GPU: {gpu}, driver {driver}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
    f"LibTorch {', '.join(sorted(libtorch)) or '-'}; {platform.system()} {platform.release()}, "
    f"{threads} CPU threads",
    "",
    f"Command: `{command}` ({took} s in all)",
    "",
    f"Model only, {size}x{size} px, batch {batch}, median of {iters} timed calls after {warmup} "
    "warm-up calls, each from a float32 batch on the CPU to CLS features on the "
    + ("GPU (copy included), clock read after the GPU has finished. " if on_gpu else "CPU. ")
    + "Python: transformers' Dinov2Model with SDPA attention in eager PyTorch "
    "(`bench/reference.py model --device cuda`), which copies the batch with `x.to(device, "
    "dtype)`. C++: the library (`dinov2_bench model --device cuda`), which stages the batch in "
    "pinned memory and copies it without blocking. Pinned batch: the C++ side handed a batch "
    "already in pinned memory (`--input pinned`). Batch on the GPU: both sides handed a batch "
    "already on the GPU (`--input cuda`), the model alone. Peak GPU memory and the output "
    "checks are those of the first two columns. float32 matrix products run in full float32 "
    "(PyTorch's default: no TF32) on both sides.",
    "",
    "| model | dtype | Python img/s | C++ img/s | C++/Python | C++, pinned batch img/s "
    "| batch on the GPU: Python / C++ img/s (C++/Python) | peak GPU MB Python / C++ "
    "| CLS cosine bf16 vs fp32 (C++) | same output |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for v in variants.split():
    for d in dtypes.split():
        py, cc, pin = get("python", v, d), get("cpp", v, d), get("cpp", v, d, "pinned")
        py_gpu, cc_gpu = get("python", v, d, "cuda"), get("cpp", v, d, "cuda")
        ips = lambda r: r["images_per_s"] if r else None
        ratio = f"{ips(cc) / ips(py):.2f}x" if py and cc else "-"
        on_device = f"{fmt(ips(py_gpu))} / {fmt(ips(cc_gpu))}" + (
            f" ({ips(cc_gpu) / ips(py_gpu):.2f}x)" if py_gpu and cc_gpu else ""
        )
        mem = f"{fmt((py or {}).get('peak_gpu_mb'), '.0f')} / {fmt((cc or {}).get('peak_gpu_mb'), '.0f')}"
        cosine = fmt(cc.get("min_cls_cosine"), ".5f") if cc and d != "float32" else "-"
        same = "-"
        # transformers interpolates the position embedding of non-register models differently
        # from the official model except at 518 (as bench/run.py notes): compare there only.
        if py and cc and (size == "518" or v.endswith("_reg")):
            a, b = py["checksum"], cc["checksum"]
            tol = (1e-3 if d == "float32" else 3e-2) * max(1.0, abs(a))
            same = "yes" if abs(a - b) <= tol else f"no ({a:.4g} vs {b:.4g})"
        out.append(
            f"| {v} | {d} | {fmt(ips(py))} | {fmt(ips(cc))} | {ratio} | {fmt(ips(pin))} "
            f"| {on_device} | {mem} | {cosine} | {same} |"
        )
text = "\n".join(out) + "\n"
open(dst, "w").write(text)
print(text)
EOF
log "written to $OUTDIR/GPU_BENCHMARKS.md (raw results: $RESULTS); paste it into docs/BENCHMARKS.md"
