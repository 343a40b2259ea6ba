#!/bin/bash
# Quiet-machine comparison (2026-12-02 evening, main after the sixth session's merges; train_seconds: DIR/metrics.jsonl), 2 threads each, alternating: dpsgd (main HEAD) vs Opacus.
# PY: a Python with torch, opacus and kymatio (this run: torch 2.15.0, opacus 1.6.0, kymatio 0.3.0); the Opacus scatter-cnn script reads its Kymatio features from .cache/opacus-kymatio-mnist-*.npy
cd "$(git rev-parse --show-toplevel)"
export DPSGD_FEATURE_CACHE=${DPSGD_FEATURE_CACHE:-.cache/dpsgd-features}
B=${B:-target/release}  # cargo build --release --bins --examples first
echo "start $(date +%T) commit $(git rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in 1 2 3; do
  for m in tanh-convnet scatter-cnn; do
    $B/dpsgd train --model $m --epochs 1 --seed 1 --out /tmp/q4-$m-$r > /tmp/q4-$m-$r.log 2>&1
    echo "round $r dpsgd $m train_seconds $(grep -o '"train_seconds":[^,}]*' /tmp/q4-$m-$r/metrics.jsonl | head -1) load $(cut -d' ' -f1 /proc/loadavg)"
  done
  echo "round $r opacus scatter-cnn: $(${PY:-python3} benches/python/opacus_epoch.py --model scatter-cnn --act tanh --batch-size 256 --threads 2 --noise-multiplier 1.0 --max-grad-norm 0.1 2>/dev/null | tail -2 | tr '\n' ' ') load $(cut -d' ' -f1 /proc/loadavg)"
  echo "round $r opacus tanh: $(${PY:-python3} benches/python/opacus_epoch.py --act tanh --batch-size 256 --threads 2 --noise-multiplier 1.0 --max-grad-norm 0.1 2>/dev/null | tail -2 | tr '\n' ' ') load $(cut -d' ' -f1 /proc/loadavg)"
  echo "round $r dpsgd dcgan: $($B/examples/dp_dcgan --data-dir data/mnist --epsilon 10 --seed 1 --out /tmp/q4-dcg-$r --no-progress --max-steps 300 --gen-samples 0 2>&1 | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
  echo "round $r opacus dcgan: $(${PY:-python3} benches/python/dcgan_step.py --data-dir data/mnist --threads 2 --steps 300 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
done
echo "end $(date +%T)"
