#!/usr/bin/env bash
# Do split sets built from GPU features reproduce those built from CPU features?
#
# On one machine with CUDA: a randomly initialised 64-d glyph-cnn (TorchScript)
# extracts glyphs features on the GPU and on the CPU (separate caches), each
# feeds `make-splits glyphs`, and `splits diff` (oodml.splits.compare) compares the two
# split sets by content (classes, episodes, distances within 1e-4 relative).
# Prints the features' relative difference first, so the verdict can be read
# against the size of the noise (cuDNN convolutions use TF32 by default).
#
#   tools/gpu_reproduce_splits.sh      (python3 with torch + CUDA and oodml's core dependencies)
#
# Exit status: 0 when they reproduce each other, 1 when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-reproduce}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export OODML_QUIET=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

$PY - "$OUT" <<'EOF'
import json, sys, torch
from oodml.models import create_model
model = create_model("glyph-cnn", embed_dim=64, seed=0).eval()
torch.jit.save(torch.jit.script(model), f"{sys.argv[1]}/extractor.pt",
               _extra_files={"preprocessing.json": json.dumps(model.preprocessing.as_dict())})
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), "| cudnn.allow_tf32",
      torch.backends.cudnn.allow_tf32, "| matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)
EOF

for device in cuda cpu; do   # the Python API: the CLI would also import the training stack
    start=$SECONDS
    OODML_HOME="$OUT/home-$device" $PY -c "import sys; from oodml.splits import make_splits
make_splits('glyphs', extractor=sys.argv[1], device=sys.argv[2], version=sys.argv[2], out=sys.argv[3])" \
        "$OUT/extractor.pt" $device "$OUT/splits"
    echo "make-splits on $device: $((SECONDS - start)) s"
done

$PY - "$OUT" <<'EOF'
import os, sys
import numpy as np
from oodml.datasets import load_dataset
from oodml.features import extract_features, get_extractor
from oodml.shift import ClassFeatures

out = sys.argv[1]
ds, ext = load_dataset("glyphs"), get_extractor(f"{out}/extractor.pt")
features = {}
for device in ("cuda", "cpu"):
    os.environ["OODML_HOME"] = f"{out}/home-{device}"   # the cache that run wrote
    features[device] = extract_features(ds, ext, device=device).astype(np.float64)
gpu, cpu = features["cuda"], features["cpu"]
scale = np.abs(cpu).max()
means = [ClassFeatures(f, ds.labels).means for f in (gpu, cpu)]
print(f"features GPU vs CPU: max |diff| / max |x| {np.abs(gpu - cpu).max() / scale:.2e}, "
      f"median per image {np.median(np.linalg.norm(gpu - cpu, axis=1) / np.linalg.norm(cpu, axis=1)):.2e}; "
      f"class means: max rel {np.abs(means[0] - means[1]).max() / np.abs(means[1]).max():.2e}")
EOF

$PY -c "import sys; from oodml.splits import compare
diff = compare(*sys.argv[1:]); print(diff.format()); sys.exit(0 if diff.reproduces else 1)" \
    "$OUT/splits/glyphs/cuda" "$OUT/splits/glyphs/cpu"
