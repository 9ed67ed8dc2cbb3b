#!/bin/bash
# The committees fixed in the plan, once both queues are done or at 12:20 UTC (a
# network still training then is stopped and does not join).
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-first-kernel-3-and-7
L=$R/logs
until { grep -q "core0 done" $L/chain.log && grep -q "core1 done" $L/chain.log; } || [ $(date -u +%H%M) -ge 1220 ]; do sleep 20; done
if ! { grep -q "core0 done" $L/chain.log && grep -q "core1 done" $L/chain.log; }; then
  echo "cut-off 12:20 reached; stopping what still trains $(date -u +%T)" >> $L/chain.log
  pkill -f "workdir=runs/modern_deep_el36_tv_k" ; pkill -f "core.sh"; sleep 5
fi
OLD=""
for n in s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10; do OLD="$OLD runs/outputs/modern_deep_el36_tv_$n.npz"; done
for n in w10_s11 w20_s12; do OLD="$OLD runs/outputs/tta_A/modern_deep_el36_tv_$n.npz"; done
SIX=$(echo $OLD | cut -d' ' -f1-6)
NEW=""
for f in runs/outputs/modern_deep_el36_tv_k*_s*.npz; do
  n=$(basename $f .npz)
  grep -q "$n outputs rc=0" $L/chain.log && NEW="$NEW $f"
done
echo "new members:$NEW" >> $L/chain.log
csv() { echo $* | tr ' ' ','; }
$P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(csv $OLD $NEW) --vote_out=$R/vote_H.json > $L/vote_H.log 2>&1
echo "vote H rc=$? $(date -u +%T)" >> $L/chain.log
$P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(csv $NEW) --vote_out=$R/vote_K.json > $L/vote_K.log 2>&1
echo "vote K rc=$? $(date -u +%T)" >> $L/chain.log
$P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(csv $SIX $NEW) --vote_out=$R/vote_S6K.json > $L/vote_S6K.log 2>&1
echo "vote S6K rc=$? $(date -u +%T)" >> $L/chain.log
echo "votes done $(date -u +%T)" >> $L/chain.log
