#!/bin/bash
# MNIST ε = 10 ten one-class DP-DCGANs, seeds 2–5 (binaries of main 2803982), nice 19
B=/work/runs-lead/bin
for s in 2 3 4 5; do
  O=/work/runs-lead/dcgan-m10/s$s
  mkdir -p $O/eval && cp /work/runs-gswgan7/eval/clf-mnist.safetensors $O/eval/
  for d in 0 1 2 3 4 5 6 7 8 9; do
    echo "seed $s class $d start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    nice -n 19 $B/dp_dcgan --data-dir /work/main/data/mnist --target-digit $d --epochs 10 --epsilon 10 --seed $s --gen-samples 6000 --no-progress --out $O/c$d 2>&1 | tail -1
  done
  (cd $O && nice -n 19 $B/gan_eval --data-dir /work/main/data/mnist --samples c{0..9}/gen_data.safetensors --classifier eval/clf-mnist.safetensors --json gan_eval.json > eval.log 2>&1)
  echo "seed $s eval done $(date +%T): $(grep -o '"downstream_accuracy": [0-9.]*' $O/gan_eval.json)"
done
