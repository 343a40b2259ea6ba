#!/bin/bash
# Issue 12, sixth round (2026-12-03 01:27-01:33): criterion bench binaries of b9c0ef5 (./old/) and of
# this branch (./new/) alternated twice, then e2emin.sh (old = dp_dcgan of b9c0ef5, new = of this
# branch) at 2 and 1 threads, then a perf profile of the new binary. Log: final.log.
la() { cut -d' ' -f1-3 /proc/loadavg; }
crit() { # label dir
  for spec in "conv2d dcgan_d2" "conv_transpose g2" "group_norm _"; do
    set -- $spec
    RAYON_NUM_THREADS=1 ./$L/$1 --bench $2 --warm-up-time 0.5 --measurement-time 2 --noplot 2>&1 | awk -v L=$L '/^[a-z0-9_]+\// {n=$1} /time:/ && !/%/ {print "crit", L, n, $4, $5}'
  done
  echo "crit $L done load $(la)"
}
echo "start $(date -u +%H:%M:%S) load $(la)"
for r in 1 2; do for L in old new; do crit; done; done
OLD=./dp_dcgan-v0 NEW=./dp_dcgan-v3 ./e2emin.sh 2 6 100
OLD=./dp_dcgan-v0 NEW=./dp_dcgan-v3 ./e2emin.sh 1 6 100
RAYON_NUM_THREADS=1 perf record -e cpu-clock -F 999 -o perf-after.data ./dp_dcgan-v3 --data-dir /work/wt-dcgan6/data/mnist --epsilon 10 --seed 1 --out /tmp/dc6p --no-progress --max-steps 100 --gen-samples 0 2>&1 | tail -1
echo "end $(date -u +%H:%M:%S) load $(la)"
