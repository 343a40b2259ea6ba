#!/bin/bash
R=/work/runs-accuracy6
cd $R
while kill -0 11680 2>/dev/null; do sleep 10; done
./queue.sh mnist-val
W=$(python3 decide.py mA-val/repeats.json mB-val/repeats.json 1:0.9892,2:0.9878 1:0.9882,2:0.9880)
echo "=== MNIST winner: $W"
[ "$W" = B ] && ./queue.sh mnist-test
./queue.sh fashion-val
W=$(python3 decide.py fA-val/repeats.json fB-val/repeats.json)
echo "=== Fashion winner: $W"
[ "$W" = B ] && ./queue.sh fashion-test
./queue.sh mnist-rerun12
echo "=== all done $(date -u)"
