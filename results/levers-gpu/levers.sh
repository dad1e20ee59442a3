#!/usr/bin/env bash
# The GPU levers of RESULTS.md section 8: 16 epochs (--close-mosaic 4), two seeds each, all eight runs at once on
# one H200 (offline: the pinned wheels and the stand-in dataset were carried in .gpu/, which git ignores).
export PYTHONUNBUFFERED=1 DETECTION_DATA=.gpu/data/valorant-object-detection
python3 -m pip install -q --no-deps --no-index .gpu/wheels/*.whl 2>&1 | tail -2
R=/tmp/lev; mkdir -p $R
T="--box-weight 2.5 --box-bins 0 --tal-topk 13 --tal-alpha 1"   # TOOD's balance; the flags after it override it
base="--epochs 16 --close-mosaic 4 --workers 2 --out $R $T"
v8="--box-weight 15 --dfl-weight 3 --box-bins 16 --tal-alpha 0.5 --tal-topk 10"
u5="--unfreeze 5 --backbone-lr 0.1"
for s in 0 1; do
  python3 train.py $base --seed $s --name base-s$s > $R/base-s$s.log 2>&1 &
  python3 train.py $base --seed $s $v8 --name v8bal-s$s > $R/v8bal-s$s.log 2>&1 &
  python3 train.py $base --seed $s $u5 --name u5lr01-s$s > $R/u5lr01-s$s.log 2>&1 &
  python3 train.py $base --seed $s $v8 $u5 --name v8u5-s$s > $R/v8u5-s$s.log 2>&1 &
done
collect() { for f in $R/*/metrics.csv; do echo "== $f"; cat $f; done > $OUT/metrics_all.txt 2>/dev/null; \
            grep -h "device\]\|weights\|TEST\|Error\|error" $R/*.log > $OUT/logs_grep.txt 2>/dev/null; }
while [ "$(jobs -r | wc -l)" -gt 0 ]; do sleep 15; collect; done
collect
for d in $R/*/; do n=$(basename $d); [ -f $d/best.pt ] && python3 evaluate.py --checkpoint $d/best.pt --split validation \
  --save-metrics $R/$n-val.json --pr /tmp/pr.png > /dev/null 2>&1; done
for f in $R/*-val.json; do echo "== $f"; cat $f; echo; done > $OUT/val_metrics.txt
tail -3 $R/*.log > $OUT/log_tails.txt
nvidia-smi --query-gpu=name --format=csv > $OUT/gpu.txt
