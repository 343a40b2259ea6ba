#!/bin/bash
# Fashion-MNIST ε = 1 ten one-class DP-DCGANs, seeds 2 and 3 (binary of b8f3746-equivalent DCGAN code, tgt-main at 11dd0dc)
B=target/release/examples
for s in 2 3; do
  O=runs/dcgan-f1-seeds/s$s
  mkdir -p $O/eval && cp runs/dcgan-pc-f10/eval/clf-fashion.safetensors $O/eval/
  for d in 0 1 2 3 4 5 6 7 8 9; do
    echo "seed $s class $d start $(date +%T)"
    nice -n 19 $B/dp_dcgan --dataset fashion-mnist --target-digit $d --epochs 10 --epsilon 1 --seed $s --gen-samples 6000 --no-progress --out $O/c$d 2>&1 | tail -1
  done
  (cd $O && nice -n 19 $B/gan_eval --dataset fashion-mnist --samples c{0..9}/gen_data.safetensors --classifier eval/clf-fashion.safetensors --json gan_eval.json > eval.log 2>&1)
  echo "seed $s eval done $(date +%T): $(grep -o '"downstream_accuracy": [0-9.]*' $O/gan_eval.json)"
done
