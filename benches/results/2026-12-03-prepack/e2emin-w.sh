#!/bin/bash
# Copy of benches/results/2026-12-03-dcgan6/e2emin.sh with extra dp_dcgan flags from $EXTRA
# (e.g. EXTRA="--ngf 128 --ndf 128"): PAIRS alternating old/new pairs of STEPS-step runs.
#   OLD=... NEW=... EXTRA=... e2emin-w.sh THREADS PAIRS STEPS
T=$1; PAIRS=$2; STEPS=$3
: "${OLD:?set OLD}" "${NEW:?set NEW}"
DATA=${DATA:-data/mnist}
one() { RAYON_NUM_THREADS=$T "$1" --data-dir "$DATA" --epsilon 10 --seed 1 --out "/tmp/e2emin-$2" --no-progress --max-steps "$STEPS" --gen-samples 0 $EXTRA 2>&1 | grep -oE '[0-9.]+ s/step' | cut -d' ' -f1; }
for i in $(seq "$PAIRS"); do
  a=$(one "$OLD" old); b=$(one "$NEW" new)
  echo "pair $i T=$T old $a new $b load $(cut -d' ' -f1 /proc/loadavg)"
done
