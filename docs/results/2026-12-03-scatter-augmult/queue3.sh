#!/bin/bash
# A check, decides nothing: the reported ε = 1 configuration (e1j, plain) on the test set, seeds 1–5,
# with this binary, to pair the augmult test figures with figures of the same binary.
export DPSGD_FEATURE_CACHE=/work/cache-features
B=/work/runs-accuracy6/dpsgd-v1
R=/work/runs-accuracy6
cd /work/wt-accuracy6
E1="--model scatter-linear --batch-size 2048 --physical-batch 1024 --lr 4 --momentum 0.9 --max-grad-norm 0.1 --epochs 15 --epsilon 1"
echo "=== e1A-test-repro start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
nice -n 10 $B train $E1 --repeats 5 --seed 1 --out $R/e1A-test-repro > $R/e1A-test-repro.log 2>&1
echo "=== e1A-test-repro end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
