#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One command for the benchmark table: set up and build, then bench/run.py (options pass through,
# e.g. --quick). Run it on an otherwise idle machine; it takes about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q matplotlib 2>&1 | grep -v '^WARNING' || true
exec .venv/bin/python bench/run.py "$@"
