#!/bin/bash
# Lean side-by-side on a loaded VM: one thread each, alternating before (b8f3746) / after (this branch), and Opacus's DCGAN step.
cd /work/wt-speed2
export DPSGD_FEATURE_CACHE=/work/cache-accuracy3 RAYON_NUM_THREADS=1
R=${1:-3}; D=/work/runs/speed2; T=/tmp/s2e2e1; mkdir -p $T
ld() { cut -d' ' -f1 /proc/loadavg; }
echo "start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 $R); do
  for v in before after; do
    B=$D/dpsgd-$v; G=$D/dp_dcgan-$v
    for m in scatter-cnn tanh-convnet; do
      rm -rf $T/$m-$v-$r
      $B train --model $m --epochs 1 --seed 1 --out $T/$m-$v-$r > $T/$m-$v-$r.log 2>&1
      echo "round $r dpsgd-$v $m $(grep -o '"train_seconds":[^,}]*' $T/$m-$v-$r/metrics.jsonl | head -1) load $(ld)"
    done
    echo "round $r dpsgd-$v dcgan: $($G --data-dir data/mnist --epsilon 10 --seed 1 --out $T/dcg-$v-$r --no-progress --max-steps 100 --gen-samples 0 2>&1 | tail -1) load $(ld)"
    rm -rf $T/dcg-$v-$r
  done
  echo "round $r opacus dcgan: $(/work/pyenv/bin/python benches/python/dcgan_step.py --data-dir data/mnist --threads 1 --steps 100 2>/dev/null | tail -1) load $(ld)"
done
echo "end $(date +%T)"
