#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets everything up (scripts/setup.sh --reference) and runs every test: CTest (C++ unit tests,
# the find_package consumer) and pytest (the exporter against transformers, timm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --reference
status=0
ctest --test-dir build --output-on-failure -j 2 || status=1
(cd tests/python && ../../.venv/bin/python -m pytest -q) || status=1
exit $status
