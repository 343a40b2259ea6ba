#!/bin/bash
# Sixth round, pre-registered in BENCHMARKS.md (commit 721b657). One run at a time.
export DPSGD_FEATURE_CACHE=/work/cache-features
B=/work/runs-accuracy6/dpsgd-v1
R=/work/runs-accuracy6
cd /work/wt-accuracy6
G3="--model scatter-linear --input-norm private --norm-noise 8 --batch-size 4096 --physical-batch 1024 --lr 8 --momentum 0.9 --max-grad-norm 0.1 --epochs 40 --epsilon 3"
AUG="--augmult 2 --augmult-views 4"
FA="--dataset fashion-mnist --model scatter-linear --batch-size 8192 --physical-batch 1024 --lr 16 --momentum 0.9 --max-grad-norm 0.1 --epochs 40 --epsilon 3"
E1="--model scatter-linear --batch-size 2048 --physical-batch 1024 --lr 4 --momentum 0.9 --max-grad-norm 0.1 --epochs 15 --epsilon 1"
GN="--model scatter-linear --batch-size 4096 --physical-batch 1024 --lr 8 --momentum 0.9 --max-grad-norm 0.1 --epochs 40 --epsilon 3"
run() { name=$1; shift; echo "=== $name start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"; nice -n 10 $B train "$@" --out $R/$name > $R/$name.log 2>&1; echo "=== $name end $(date -u +%H:%M:%S) rc $? load $(cut -d' ' -f1-3 /proc/loadavg)"; }
case "$1" in
mnist-val)
  run mA-val $G3 --validation 5000 --repeats 3 --seed 3
  run mB-val $G3 $AUG --validation 5000 --repeats 3 --seed 3 ;;
mnist-test)
  run mB-test $G3 $AUG --repeats 5 --seed 6 ;;
fashion-val)
  run fA-val $FA --validation 5000 --repeats 5 --seed 1
  run fB-val $FA $AUG --validation 5000 --repeats 5 --seed 1 ;;
fashion-test)
  run fB-test $FA $AUG --repeats 5 --seed 1 ;;
mnist-rerun12)
  run mA-val12 $G3 --validation 5000 --repeats 2 --seed 1
  run mB-val12 $G3 $AUG --validation 5000 --repeats 2 --seed 1 ;;
e1-val)
  run e1A-val $E1 --validation 5000 --repeats 5 --seed 1
  run e1B-val $E1 $AUG --validation 5000 --repeats 5 --seed 1 ;;
e1-test)
  run e1B-test $E1 $AUG --repeats 5 --seed 1 ;;
cd-val)
  run mC-val $GN $AUG --validation 5000 --repeats 5 --seed 1
  run mD-val $GN --validation 5000 --repeats 5 --seed 1 ;;
c-test)
  run mC-test $GN $AUG --repeats 5 --seed 6 ;;
d-test)
  run mD-test $GN --repeats 5 --seed 6 ;;
esac
