#!/usr/bin/env bash
# The GPU check, one script: the CUDA tests, the benchmark at 416 and 640 px (the default workers, and 2 as a
# free Colab has), and a 2-epoch training of the stand-in. Run from the repository root on a machine with a GPU:
#     bash results/gpu/check.sh [OUT_DIR]          # default OUT_DIR: results/gpu/<card name>
# Each output goes to its own file in OUT_DIR; RESULTS.md section 6 quotes them. The training reads the dataset
# train.py finds (the hub, then ../shared); on a machine that has neither, point $DETECTION_DATA at a copy:
#     DETECTION_DATA=/path/to/valorant-object-detection bash results/gpu/check.sh
set -u
export PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')
OUT=${1:-results/gpu/$card}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv; echo "cpu cores: $(nproc)";
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
python -m pytest -q -rs tests/test_cuda.py tests/test_device.py > "$OUT/cuda_tests.txt" 2>&1
python -m tools.benchmark --sizes 416 640 --repeats 5 --loop-steps 20 > "$OUT/bench.txt" 2>&1
python -m tools.benchmark --sizes 416 640 --repeats 5 --loop-steps 20 --workers 2 > "$OUT/bench_workers2.txt" 2>&1
python train.py --epochs 2 --out /tmp/gpu-check --name e2 --exist-ok > "$OUT/train.txt" 2>&1
cp /tmp/gpu-check/e2/metrics.csv "$OUT/train_metrics.csv"
tail -n 3 "$OUT"/*.txt
