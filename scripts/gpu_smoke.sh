#!/usr/bin/env bash
# GPU smoke check on a CUDA machine that has torch but not this suite's other
# packages (carried as wheels in .whl/): the speed benchmark on the GPU, then a short
# tiny-preset run of PART and MAE through the Runner with AMP.
set -u
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_smoke}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, timm, mmengine; print('torch', torch.__version__, 'timm', timm.__version__, 'mmengine', mmengine.__version__)"
python3 -m benchmarks.speed --repeats 10 2>&1 | tee "$OUT/speed_gpu.txt"
for m in part mae; do
    python3 -m benchmarks.run --method $m --task cifar100 --cache /tmp/cache --out "$OUT/runs" \
        --cfg-options tasks.cifar100.pretrain.epochs=2 tasks.cifar100.finetune.epochs=2 \
        tasks.cifar100.loader.num_workers=4 \
        2>&1 | grep -E "Epoch\(train\).*\]\[60|acc1|error|Error|AmpOptim|record" | tail -8
done 2>&1 | tee "$OUT/run_gpu.txt"
