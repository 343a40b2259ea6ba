#!/bin/bash
R=/work/runs-accuracy6
cd $R
while kill -0 $(cat master.pid) 2>/dev/null; do sleep 10; done
./queue2.sh e1-val
W=$(python3 decide.py e1A-val/repeats.json e1B-val/repeats.json)
echo "=== MNIST eps=1 winner: $W"
[ "$W" = B ] && ./queue2.sh e1-test
./queue2.sh cd-val
W=$(python3 decide4.py mA-val/repeats.json mB-val/repeats.json mC-val/repeats.json mD-val/repeats.json 1:0.9892,2:0.9878 1:0.9882,2:0.9880)
echo "=== MNIST eps=3 four-arm winner: $W"
[ "$W" = C ] && ./queue2.sh c-test
[ "$W" = D ] && ./queue2.sh d-test
echo "=== all done $(date -u)"
