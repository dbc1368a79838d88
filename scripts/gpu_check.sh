#!/usr/bin/env bash
# One GPU check in one call (at most 8 minutes): the gpu-marked tests, the grouped-matmul benchmark, the
# generation benchmark and the serving engine check, each writing JSON into the folder given as the first argument.
#
#   scripts/gpu_check.sh OUT_DIR [MODEL]
#
# MODEL: what `readme-jax bench generate` runs (default: $READMEJAX_GPU_MODEL, else "default"; skipped with a
# note when it is absent, e.g. on a machine without the embedded GGUF). Runs against the machine's own jax (the
# GPU machine has a CUDA jax preinstalled and no package registry): the project is put on PYTHONPATH, never
# installed, and the commands are registered straight from their modules.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [MODEL]}
MODEL=${2:-${READMEJAX_GPU_MODEL:-default}}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
status=0

"$PY" - "$OUT/versions.json" <<'PYEOF'
import json, platform, sys
import jax
info = {"python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()]}
try:
    import flax
    info["flax"] = flax.__version__
except ImportError:
    pass
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
PYEOF

timeout 240 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
  > "$OUT/gpu_tests.txt" 2>&1 || status=1
tail -3 "$OUT/gpu_tests.txt"

timeout 120 "$PY" -m kernels.bench --json > "$OUT/kernels_bench.json" 2> "$OUT/kernels_bench.err" || status=1

timeout 150 "$PY" - "$MODEL" > "$OUT/bench_generate.json" 2> "$OUT/bench_generate.err" <<'PYEOF' || status=1
import importlib.metadata, sys
from readme_jax import cli
ep = importlib.metadata.EntryPoint(name="bench", value="readme_jax.commands.bench", group=cli.GROUP)
args = ["bench", "generate", "--model", sys.argv[1], "--no-hf", "--repeats", "2", "--json"]
sys.exit(cli.main(args, entry_points=[ep]))
PYEOF
# The serving engine on the device: H2D bandwidth (pinned_host vs numpy), copy/compute overlap, and a closed-loop
# run at two capacities x {belady, lru} on a random MoE large enough for real transfers.
timeout 180 "$PY" scripts/gpu_engine_check.py > "$OUT/engine_check.json" 2> "$OUT/engine_check.err" || status=1

echo "gpu_check: status $status; files in $OUT"
exit $status
