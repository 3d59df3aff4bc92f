#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the libFuzzer targets of fuzz/ (built with ASan + UBSan in build-asan/).
#   scripts/fuzz.sh TARGET SECONDS      one target for SECONDS (image, model, head, safetensors,
#                                       npy, text, weights; or fuzz_TARGET)
#   scripts/fuzz.sh TARGET --runs N     one target for N executions
#   scripts/fuzz.sh all --runs N        every target for N executions (the CI smoke run)
# Seeds: fuzz/corpus/TARGET (kept in the repository), plus toy model and head files that
# fuzz/make_seeds.py writes. Inputs found to add coverage go to build-asan/fuzz-corpus/TARGET,
# crashes to build-asan/fuzz-crashes/TARGET/; rerun one with build-asan/fuzz/fuzz_TARGET FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGETS=(image model head safetensors npy text weights tar)
usage() { echo "usage: scripts/fuzz.sh TARGET|all SECONDS | TARGET|all --runs N" >&2; exit 2; }
[ $# -ge 2 ] || usage
target=${1#fuzz_}
if [ "$2" = --runs ]; then
  [ $# = 3 ] && [[ $3 =~ ^[0-9]+$ ]] || usage
  LIMIT=(-runs="$3" -seed=1)  # a fixed execution count runs the same inputs every time
else
  [ $# = 2 ] && [[ $2 =~ ^[0-9]+$ ]] || usage
  LIMIT=(-max_total_time="$2")
fi
if [ "$target" = all ]; then
  selected=("${TARGETS[@]}")
elif [[ " ${TARGETS[*]} " == *" $target "* ]]; then
  selected=("$target")
else
  echo "fuzz.sh: unknown target '$1'; the targets are ${TARGETS[*]}" >&2
  exit 2
fi
log() { printf '\033[1mfuzz:\033[0m %s\n' "$*" >&2; }

scripts/sanitize.sh address --build-only
BUILD=$ROOT/build-asan
GENERATED=$BUILD/fuzz-seeds
if [ ! -f "$GENERATED/weights/toy.safetensors" ] || [ fuzz/make_seeds.py -nt "$GENERATED/weights/toy.safetensors" ]; then
  log "writing the toy model and head seeds (fuzz/make_seeds.py)"
  .venv/bin/python fuzz/make_seeds.py "$GENERATED"
fi

export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"  # leaks: the CTest leg checks them
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for t in "${selected[@]}"; do
  case $t in
    model | head) seeds=$GENERATED/$t; extra=(-dict="$ROOT/fuzz/metadata.dict") ;;
    weights) seeds=$GENERATED/$t; extra=() ;;
    *) seeds=$ROOT/fuzz/corpus/$t; extra=() ;;
  esac
  largest=$(find "$seeds" -type f -printf '%s\n' | sort -n | tail -1)
  corpus=$BUILD/fuzz-corpus/$t
  crashes=$BUILD/fuzz-crashes/$t
  mkdir -p "$corpus" "$crashes"
  log "fuzz_$t ${LIMIT[*]} (seeds: $seeds)"
  # -max_len: room for records to grow; -timeout: an input that runs 30 s is a hang.
  "$BUILD/fuzz/fuzz_$t" "$corpus" "$seeds" "${LIMIT[@]}" "${extra[@]}" \
    -max_len=$((largest + 4096)) -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$crashes/" 2>"$BUILD/fuzz-$t.log" || {
    status=1
    tail -40 "$BUILD/fuzz-$t.log"
    log "fuzz_$t FAILED; the input is in $crashes/"
  }
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+ *DONE' "$BUILD/fuzz-$t.log" |
    sed "s/^/  fuzz_$t: /" || true
done
exit $status
