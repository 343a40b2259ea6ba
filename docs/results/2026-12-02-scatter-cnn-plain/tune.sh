#!/bin/bash
# usage: tune.sh NAME extra-args...  (validation run, MNIST scatter-cnn (GroupNorm affine=False), eps 3)
name=$1; shift
cd /work/main
DPSGD_FEATURE_CACHE=/work/cache-accuracy3 nice -n 19 /work/runs/sc5/dpsgd-d0f1ecf train --validation 5000 --seed ${SEED:-1} --epsilon 3 \
  --max-grad-norm 0.1 --optimizer sgd --momentum 0.9 --physical-batch 1024 --model scatter-cnn \
  --epochs 40 --out /work/runs/sc5/tune/$name "$@" > /work/runs/sc5/tune/$name.log 2>&1
echo "$name $(date +%T) $(tail -1 /work/runs/sc5/tune/$name.log)"
