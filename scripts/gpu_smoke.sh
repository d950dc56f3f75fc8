#!/usr/bin/env bash
# One short GPU check, sized to finish inside 8 minutes on one H100 (not yet run on one;
# the speed command is cut at 7 minutes):
#
#   1. the speed table on the GPU at the run's precision (auto: bf16 on Ampere and later):
#      a plain ViT-B/16 step against PART (4802 pairs, the paper's ImageNet setting), MAE,
#      MP3 and DropPos at 224 px, batch 128 per GPU (the paper's 1024 over 8 GPUs), with
#      FLOPs and MFU; peak memory per method; PART's step by pairs (1024..8192);
#   2. 300 training iterations of each of the four methods through the suite's Runner
#      (build_runner: bf16 optimizer wrapper, pinned-memory loaders, the hooks' reads at
#      log intervals), printing images/s and MFU per method.
#
# Both go to results/speed/<device>.md (python -m benchmarks.speed writes it) and are
# copied to $OUT with the whole log, for the session to commit.
#
#   bash scripts/gpu_smoke.sh            # on the GPU machine, from the repository root
#   bash scripts/gpu_smoke.sh --quick    # the same commands at tiny sizes on a CPU (a check
#                                        # of the script itself; writes nothing under results/)
#
# The GPU machine has torch, torchvision and timm but not mmengine: carry these wheels
# (pure Python) in .whl/ (ignored by git through .git/info/exclude), downloaded here with
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl mmengine==0.10.7 \
#       addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.8 timm==1.0.31
# (timm pinned to the version the suite is tested with). Nothing here needs MMDetection
# or mmcv: benchmarks.speed imports the methods and engine/, not tasks/.
set -u -o pipefail
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_smoke}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PART_BENCH_LOG_LEVEL=WARNING
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
{
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    else
        echo "no nvidia-smi on this machine"
    fi
    "$PY" -c "import torch, timm, mmengine; print('torch', torch.__version__, 'timm', timm.__version__, 'mmengine', mmengine.__version__, 'cuda', torch.cuda.is_available())" \
        || { echo "error: torch, timm and mmengine must import (carry the wheels above in .whl/)"; exit 1; }
} 2>&1 | tee "$OUT/gpu_smoke.log" || exit 1

METHODS="part mae mp3 droppos"
if [ "$QUICK" = 1 ]; then
    ARGS=(--quick --device cpu --methods $METHODS --only steps memory pairs runner
          --pairs 64 128 --sizes 32 --repeats 3 --inner 1 --runner-steps 4 --no-write)
    LIMIT=300
else
    ARGS=(--device cuda --precision auto --methods $METHODS --only steps memory pairs runner
          --settings vit_base:224:16:128:4802 --pairs 1024 2048 4802 8192
          --pairs-setting vit_base:16:128 --sizes 224 --repeats 7 --inner 2 --runner-steps 300)
    LIMIT=420
fi
timeout "$LIMIT" "$PY" -m benchmarks.speed "${ARGS[@]}" 2>&1 | tee -a "$OUT/gpu_smoke.log"
status=$?
written=$(sed -n 's/^written: //p' "$OUT/gpu_smoke.log" | tail -n 1)
if [ -n "$written" ] && [ -f "$written" ]; then
    cp "$written" "$OUT/" && echo "copied $written to $OUT/"
fi
exit $status
