#!/bin/bash
# DP-DCGAN step at three widths (ngf = ndf = 32, 64, 128; 28×28, lot 64), private and not, dpsgd's
# examples/dp_dcgan against Opacus's dcgan.py step (benches/python/dcgan_step.py) and plain
# PyTorch (the same script with --disable-dp), 2 threads each, alternating within each round.
# dpsgd's figure is the run's mean s/step (epoch-end work included); the Python ones are medians.
# Usage: B=<cargo release dir> PY=<python with torch+opacus> bash scale.sh [ROUNDS]
set -u
B=${B:-target/release}; PY=${PY:-python3}; R=${1:-3}
steps() { case $1 in 32) echo 300;; 64) echo 120;; *) echo 40;; esac; }
for r in $(seq 1 "$R"); do
  for w in 32 64 128; do
    n=$(steps $w)
    for dp in "" "--disable-dp"; do
      tag=${dp:+nodp}; tag=${tag:-dp}
      echo "round $r width $w $tag dpsgd: $(RAYON_NUM_THREADS=2 "$B/examples/dp_dcgan" --data-dir data/mnist --ngf $w --ndf $w --epsilon 10 $dp --seed 1 --out /tmp/qs-$r-$w-$tag --no-progress --max-steps $n --gen-samples 0 2>&1 | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
      echo "round $r width $w $tag torch: $("$PY" benches/python/dcgan_step.py --data-dir data/mnist --ngf $w --ndf $w $dp --threads 2 --steps $n 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
