#!/bin/bash
# Quiet DP-DCGAN step comparison: dpsgd's examples/dp_dcgan (the 28×28 CPU preset) against
# Opacus's dcgan.py step (benches/python/dcgan_step.py), 2 threads each, 300 steps, alternating
# rounds. Usage: B=<cargo release dir> PY=<python with torch+opacus> bash quiet.sh [ROUNDS]
set -u
B=${B:-target/release}; PY=${PY:-python3}; R=${1:-3}
for r in $(seq 1 "$R"); do
  echo "round $r dpsgd: $(RAYON_NUM_THREADS=2 "$B/examples/dp_dcgan" --data-dir data/mnist --epsilon 10 --seed 1 --out /tmp/qd-$r --no-progress --max-steps 300 --gen-samples 0 2>&1 | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
  echo "round $r opacus: $("$PY" benches/python/dcgan_step.py --data-dir data/mnist --threads 2 --steps 300 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
done
