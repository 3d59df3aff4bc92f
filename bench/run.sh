#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One command for the benchmark table: set up and build, then bench/run.py (options pass through,
# e.g. --quick, --no-peers, --isa native). Run it on an otherwise idle machine; it takes about 50
# minutes on 2 cores with the ONNX Runtime and OpenVINO rows and the AVX2-limited run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q matplotlib 2>&1 | grep -v '^WARNING' || true
# The peer runtimes (bench/peers.py), pinned so that a table names what it measured.
.venv/bin/python -c "import onnxruntime, openvino, onnx" 2>/dev/null ||
  .venv/bin/pip install -q onnxruntime==1.32.0 openvino==2026.4.1 onnx==1.23.2 2>&1 | grep -v '^WARNING' || true
exec .venv/bin/python bench/run.py "$@"
