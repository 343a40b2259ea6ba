#!/bin/bash
# Fashion ε = 1 seeds 4–5 (binaries of 2803982), nice 19 (run4.sh's last loop, re-run whole)
B=/work/runs-lead/bin
one() { # dataset tag seed classifier eps
  ds=$1; tag=$2; s=$3; clf=$4; eps=$5
  O=/work/runs-lead/$tag/s$s; mkdir -p $O/eval; [ -f "$clf" ] && cp $clf $O/eval/
  dd=""; [ $ds = mnist ] && dd="--data-dir /work/main/data/mnist"
  for d in 0 1 2 3 4 5 6 7 8 9; do
    echo "$tag seed $s class $d start $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    nice -n 19 $B/dp_dcgan --dataset $ds $dd --target-digit $d --epochs 10 --epsilon $eps --seed $s --gen-samples 6000 --no-progress --out $O/c$d 2>&1 | tail -1
  done
  (cd $O && nice -n 19 $B/gan_eval --dataset $ds $dd --samples c{0..9}/gen_data.safetensors --classifier eval/clf-$ds.safetensors --json gan_eval.json > eval.log 2>&1)
  echo "$tag seed $s eval done $(date +%T): $(grep -o '"downstream_accuracy": [0-9.]*' $O/gan_eval.json)"
}
for s in 4 5; do one fashion-mnist dcgan-f1 $s /work/runs-lead/dcgan-f10/s2/eval/clf-fashion-mnist.safetensors 1; done
