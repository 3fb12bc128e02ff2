#!/usr/bin/env bash
# GPU check: the test suite with CUDA present, the engine benchmarks on CUDA, and the
# leukemia pipeline end to end on CUDA (paper preset, from scratch, 3 epochs per backbone).
#
#   DATA_ROOT=../shared/data/all-leukemia OUT=device-out bash benchmarks/device_check.sh
#
# Needs the package importable (pip install -e ".[example]" or PYTHONPATH=src:.) and a
# CUDA device. Each step has its own time limit and the script goes on past a failure, so
# one run reports every step. Logs go to $OUT.
set -u
OUT=${OUT:-device-out}
DATA_ROOT=${DATA_ROOT:-../shared/data/all-leukemia}
RUN_DIR=${RUN_DIR:-/tmp/leukemia-paper}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CASCADEML_TEST_DEVICE=cuda

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name rc=$rc $((SECONDS - start))s"
    tail -n 25 "$OUT/$name.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch, timm, torchmetrics, sklearn, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'torchmetrics', torchmetrics.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
    nproc
} 2>&1 | tee "$OUT/env.log"

step pytest 170 python3 -m pytest -q -p no:cacheprovider -ra tests
step engine_overhead 60 python3 benchmarks/engine_overhead.py --device cuda
step throughput 90 python3 benchmarks/throughput.py --device cuda
step leukemia 330 python3 -m examples.leukemia run --data-root "$DATA_ROOT" --preset paper \
    --no-pretrained --device cuda --out "$RUN_DIR" --no-progress \
    --set epochs=3 --set amp=true --set channels_last=true
step predict 40 python3 -m examples.leukemia predict --model "$RUN_DIR/cascade" --device cuda \
    --output "$RUN_DIR/predict.csv" "$DATA_ROOT/Pro"
{ wc -l "$RUN_DIR/predict.csv"; head -n 4 "$RUN_DIR/predict.csv"; } 2>&1 | tee -a "$OUT/predict.log"
cp "$RUN_DIR/report.md" "$RUN_DIR/metrics.json" "$OUT/" 2>/dev/null || true
