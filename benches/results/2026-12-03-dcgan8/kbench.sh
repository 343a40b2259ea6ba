#!/bin/bash
# Old vs new layer benches alternating: ROUNDS rounds of (old, new), one thread.
# usage: kbench.sh ROUNDS NEWTAG
R=$1; TAG=$2
cd /work/wt-dcgan8
for i in $(seq $R); do
 for v in old $TAG; do
  echo "== round $i $v load $(cut -d' ' -f1 /proc/loadavg)"
  RAYON_NUM_THREADS=1 /work/runs-dcgan8/bench-conv2d-$v --bench 'dcgan_d2.*/(forward|backward_sum_dx|backward_per_sample_dx)' --warm-up-time 0.5 --measurement-time 2 2>&1 | grep -E "^conv|time:"
  RAYON_NUM_THREADS=1 /work/runs-dcgan8/bench-convt-$v --bench 'g[23].*/(forward|backward_sum_dx)' --warm-up-time 0.5 --measurement-time 2 2>&1 | grep -E "^conv|time:"
 done
done
