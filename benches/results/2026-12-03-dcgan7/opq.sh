#!/bin/bash
# Two rounds, 2 threads each, 300 steps: dpsgd old, dpsgd new, Opacus (benches/python/dcgan_step.py).
cd /work/wt-dcgan7
for r in 1 2; do
  for v in old new3; do
    echo "round $r dpsgd-$v: $(RAYON_NUM_THREADS=2 /work/runs-dcgan7/dp_dcgan-$v --data-dir data/mnist --epsilon 10 --seed 1 --out /tmp/opq7-$v-$r --no-progress --max-steps 300 --gen-samples 0 2>&1 | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
  done
  echo "round $r opacus: $(/work/pyenv/bin/python benches/python/dcgan_step.py --data-dir data/mnist --threads 2 --steps 300 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
done
