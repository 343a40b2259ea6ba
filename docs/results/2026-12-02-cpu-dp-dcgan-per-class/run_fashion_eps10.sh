#!/bin/bash
cd /work/runs/dcgan-pc-f10
for d in 0 1 2 3 4 5 6 7 8 9; do
  echo "class $d start $(date +%T)"
  nice -n 19 /work/tgt-main/release/examples/dp_dcgan --dataset fashion-mnist --target-digit $d --epochs 10 --epsilon 10 --seed 1 --gen-samples 6000 --no-progress --out /work/runs/dcgan-pc-f10/c$d 2>&1 | tail -2
done
echo "all done $(date +%T)"
mkdir -p eval
nice -n 19 /work/tgt-main/release/examples/gan_eval --dataset fashion-mnist --samples c0/gen_data.safetensors c1/gen_data.safetensors c2/gen_data.safetensors c3/gen_data.safetensors c4/gen_data.safetensors c5/gen_data.safetensors c6/gen_data.safetensors c7/gen_data.safetensors c8/gen_data.safetensors c9/gen_data.safetensors --classifier eval/clf-fashion.safetensors --json gan_eval.json > eval.log 2>&1
echo "eval done $(date +%T)"
