#!/bin/bash
# Builds the V = 4 views caches (MNIST, then Fashion-MNIST): one 1-epoch run each on the
# validation split, seed 99 (not one of the pre-registered seeds); their figures decide nothing.
export DPSGD_FEATURE_CACHE=/work/cache-features
B=/work/runs-accuracy6/dpsgd-v1
cd /work/wt-accuracy6
date -u
nice -n 10 $B train --validation 5000 --seed 99 --epsilon 3 --max-grad-norm 0.1 --momentum 0.9 --physical-batch 1024 --model scatter-linear --input-norm private --norm-noise 8 --epochs 1 --batch-size 4096 --lr 8 --augmult 2 --augmult-views 4 --out /work/runs-accuracy6/cache/mnist
date -u
nice -n 10 $B train --dataset fashion-mnist --validation 5000 --seed 99 --epsilon 3 --max-grad-norm 0.1 --momentum 0.9 --physical-batch 1024 --model scatter-linear --epochs 1 --batch-size 8192 --lr 16 --augmult 2 --augmult-views 4 --out /work/runs-accuracy6/cache/fashion
date -u
