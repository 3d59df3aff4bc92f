#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job on the bundled sample photographs (examples/data):
#   1. export ViT-S/14 — from official weights when a path is given or DINOV2_WEIGHTS is set,
#      otherwise from random weights (said plainly below);
#   2. extract CLS, register and patch features of every sample image (dinov2 extract);
#   3. write the PCA pictures of the patch features (dinov2 pca);
#   4. print the cosine similarity of every image against every other;
#   5. run step 2 again with --dtype auto and print the speed of both on this CPU.
# Outputs go to out/demo/. Usage: scripts/demo.sh [dinov2_vits14_pretrain.pth]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

WEIGHTS=${1:-${DINOV2_WEIGHTS:-}}
OUT=out/demo
mkdir -p "$OUT"
DINOV2=build/bin/dinov2

if [ -n "$WEIGHTS" ]; then
  MODEL="$OUT/dinov2_vits14.pt"
  .venv/bin/dinov2-export --model dinov2_vits14 --weights "$WEIGHTS" --output "$MODEL"
else
  MODEL="$OUT/dinov2_vits14_random.pt"
  echo "demo: no weights given (pass a dinov2_vits14_pretrain.pth or set DINOV2_WEIGHTS):"
  echo "demo: using RANDOM weights — the pipeline runs, but the features carry no meaning."
  [ -f "$MODEL" ] || .venv/bin/dinov2-export --model dinov2_vits14 --weights random --seed 0 --output "$MODEL"
fi

"$DINOV2" extract --model "$MODEL" --output "$OUT/features.safetensors" examples/data \
  2> >(tee "$OUT/float32.log" >&2)
"$DINOV2" pca --model "$MODEL" --output "$OUT/pca" examples/data/*.jpg examples/data/*.png
echo
echo "Cosine similarity of the CLS features (rows and columns in file order):"
.venv/bin/python - "$OUT/features.safetensors" <<'PY'
import json, sys
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import load_file

path = sys.argv[1]
cls = load_file(path)["cls"]
with safe_open(path, "pt") as f:
    paths = json.loads(f.metadata()["paths"])
names = [Path(p).stem[:10] for p in paths]
cls = cls / cls.norm(dim=1, keepdim=True)
sim = cls @ cls.T
print(" " * 11 + "".join(f"{n:>11}" for n in names))
for name, row in zip(names, sim.tolist()):
    print(f"{name:>11}" + "".join(f"{v:11.3f}" for v in row))
PY

# The throughput choice: --dtype auto picks bfloat16 where this CPU computes it in hardware and
# float32 elsewhere; the demo runs it once so that the speed it gives here is on screen.
speed() { sed -n 's/.*(\([0-9.]*\) images\/s).*/\1/p' "$1"; }
"$DINOV2" extract --model "$MODEL" --output "$OUT/features_auto.safetensors" --dtype auto \
  examples/data 2>"$OUT/auto.log" >/dev/null
echo
echo "demo: float32 (exact) ran at $(speed "$OUT/float32.log") images/s; --dtype auto ran at" \
  "$(speed "$OUT/auto.log") images/s on this CPU ($(sed -n 's/.*\(auto: [a-z0-9]*\).*/\1/p' \
  "$OUT/auto.log" | head -1))"
echo "demo: features in $OUT/features.safetensors, PCA pictures in $OUT/pca/"
