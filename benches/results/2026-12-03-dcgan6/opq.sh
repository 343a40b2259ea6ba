#!/bin/bash
# Loaded rounds, quiet3-style (01:35-01:40): dpsgd old (b9c0ef5) and new (this branch) then Opacus, 2 threads,
# 300 steps. Round 3 Opacus stopped at load 13. Binaries: copies of each commit's dp_dcgan.
# quiet3-style rounds: dpsgd old, dpsgd new, Opacus, 2 threads each, 300 steps
WT=/work/wt-dcgan6
for r in 1 2 3; do
  for b in dp_dcgan-v0 dp_dcgan-v3; do
    echo "round $r $b: $(RAYON_NUM_THREADS=2 ./$b --data-dir $WT/data/mnist --epsilon 10 --seed 1 --out /tmp/opq-$b --no-progress --max-steps 300 --gen-samples 0 2>&1 | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
  done
  echo "round $r opacus: $(cd $WT && /work/pyenv/bin/python benches/python/dcgan_step.py --data-dir data/mnist --threads 2 --steps 300 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
done
