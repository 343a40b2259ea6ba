#!/bin/bash
# Old vs new DP-DCGAN step on a shared VM: PAIRS alternating pairs of short runs (STEPS steps,
# no epoch end at <= 91 steps), each line one pair's s/step (dp_dcgan's own figure).
#   OLD=path/to/dp_dcgan-of-b9c0ef5 NEW=path/to/dp_dcgan-of-this-branch \
#     benches/results/2026-12-03-dcgan6/e2emin.sh THREADS PAIRS STEPS
# (build each with `cargo build --release --example dp_dcgan` at its commit and copy
# target/release/examples/dp_dcgan). Run from the repository root (data/mnist).
# The logs here ran this script with OLD/NEW = copies of those binaries (dp_dcgan-v0, and
# dp_dcgan-v2 for e2emin.log: the first, larger micro-batch budgets; dp_dcgan-v3 for
# e2emin-v3.log and final.log: the committed ones).
T=$1; PAIRS=$2; STEPS=$3
: "${OLD:?set OLD}" "${NEW:?set NEW}"
DATA=${DATA:-data/mnist}
one() { RAYON_NUM_THREADS=$T "$1" --data-dir "$DATA" --epsilon 10 --seed 1 --out "/tmp/e2emin-$2" --no-progress --max-steps "$STEPS" --gen-samples 0 2>&1 | grep -oE '[0-9.]+ s/step' | cut -d' ' -f1; }
for i in $(seq "$PAIRS"); do
  a=$(one "$OLD" old); b=$(one "$NEW" new)
  echo "pair $i T=$T old $a new $b load $(cut -d' ' -f1 /proc/loadavg)"
done
