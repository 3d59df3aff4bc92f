#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything a fresh Debian/Ubuntu machine needs, then configures and builds.
#   scripts/setup.sh              system packages, .venv (pinned CPU torch + exporter), build/
#   scripts/setup.sh --reference  also .venv-ref (torch + torchvision + timm, for parity tests)
# Idempotent: each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REFERENCE=0
for arg in "$@"; do
  case $arg in
    --reference) REFERENCE=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

TORCH_VERSION=2.13.0             # its wheel carries the LibTorch the C++ build links
OPENVINO_VERSION=2026.4.1        # its wheel carries the runtime of the OpenVINO backend
REF_TORCH=(torch==2.14.1 torchvision==0.29.1)  # timm needs a torchvision matched to its torch
APT_PACKAGES=(g++ cmake ninja-build python3-venv python3-dev libopencv-dev libeigen3-dev
  libfmt-dev catch2 nlohmann-json3-dev libssl-dev libarchive-dev libcli11-dev libfaiss-dev clang-format)

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# .venv: pinned torch (CPU build, LibTorch inside) and the exporter with its test extras.
want="torch=$TORCH_VERSION;openvino=$OPENVINO_VERSION;$(stamp_of python/pyproject.toml)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.dinov2-stamp 2>/dev/null)" != "$want" ]; then
  log "creating .venv (torch==$TORCH_VERSION, exporter)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
  .venv/bin/pip install -q "torch==$TORCH_VERSION" 2>&1 | grep -v '^WARNING' || true
  .venv/bin/pip install -q -e "python[test,onnx]" "openvino==$OPENVINO_VERSION" 2>&1 |
    grep -v '^WARNING' || true
  .venv/bin/python -c "import torch, dinov2_export, transformers, onnx, openvino" # fail loudly
  echo "$want" > .venv/.dinov2-stamp
fi

if ((REFERENCE)); then
  want="${REF_TORCH[*]};timm;safetensors"
  if [ ! -x .venv-ref/bin/python ] || [ "$(cat .venv-ref/.dinov2-stamp 2>/dev/null)" != "$want" ]; then
    log "creating .venv-ref (${REF_TORCH[*]}, timm) for the reference tests"
    [ -x .venv-ref/bin/python ] || "$PY" -m venv .venv-ref
    .venv-ref/bin/pip install -q "${REF_TORCH[@]}" 2>&1 | grep -v '^WARNING' || true
    .venv-ref/bin/pip install -q timm safetensors "${REF_TORCH[@]}" 2>&1 | grep -v '^WARNING' || true
    .venv-ref/bin/python -c "import timm, torchvision"
    echo "$want" > .venv-ref/.dinov2-stamp
  fi
fi

# Configuring again is cheap and keeps the options below true; the build tool then decides
# what is out of date.
TORCH_CMAKE=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
OPENVINO_CMAKE=$(.venv/bin/python -c 'import openvino, os; print(os.path.dirname(openvino.__file__))')/cmake
log "configuring build/"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" \
  -DDINOV2_PYTHON="$ROOT/.venv/bin/python" -DDINOV2_WITH_FAISS=ON \
  -DDINOV2_WITH_OPENVINO=ON -DOpenVINO_DIR="$OPENVINO_CMAKE" >/dev/null
log "building (cmake --build build)"
cmake --build build -j "$(nproc)"
