#!/bin/bash
# Ten one-class DP-DCGANs on Fashion-MNIST at ε = 1 (δ = 1e-5) each; the classes are disjoint
# partitions, so together they are (1, 1e-5)-DP. Run from the repository root after
# `cargo build --release --examples`. (2026-12-02, binary of commit b8f3746.)
set -e
O=runs/dcgan-pc-f1
for d in 0 1 2 3 4 5 6 7 8 9; do
  echo "class $d start $(date +%T)"
  target/release/examples/dp_dcgan --dataset fashion-mnist --target-digit $d --epochs 10 --epsilon 1 \
    --seed 1 --gen-samples 6000 --no-progress --out $O/c$d 2>&1 | tail -2
done
cd $O
../../target/release/examples/gan_eval --dataset fashion-mnist --samples c{0..9}/gen_data.safetensors \
  --classifier eval/clf-fashion.safetensors --json gan_eval.json
python3 ../../scripts/gen-data-grid.py samples_fashion_eps1_rows_classes_0_to_9.png
