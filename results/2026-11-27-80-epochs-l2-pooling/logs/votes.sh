#!/bin/bash
# The committees fixed in the plan, once both queues are done or at 14:50 UTC (a
# network still training then is stopped and does not join).
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-80-epochs-l2-pooling
L=$R/logs
until { grep -q "core0 done" $L/chain.log && grep -q "core1 done" $L/chain.log; } || [ $(date -u +%H%M) -ge 1450 ]; do sleep 20; done
if ! { grep -q "core0 done" $L/chain.log && grep -q "core1 done" $L/chain.log; }; then
  echo "cut-off 14:50 reached; stopping what still trains $(date -u +%T)" >> $L/chain.log
  pkill -f "core.sh"; pkill -f "workdir=runs/modern_deep_el36_tv_k7_(e80|l2)_s"; sleep 5
fi
H=""
for n in s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10 k3_s21 k3_s23 k7_s22 k7_s24 k7_s26; do H="$H runs/outputs/modern_deep_el36_tv_$n.npz"; done
for n in w10_s11 w20_s12; do H="$H runs/outputs/tta_A/modern_deep_el36_tv_$n.npz"; done
K7=""
for n in k7_s22 k7_s24 k7_s26; do K7="$K7 runs/outputs/modern_deep_el36_tv_$n.npz"; done
NEW=""
for n in e80_s31 e80_s32 l2_s33 l2_s34; do
  N=modern_deep_el36_tv_k7_$n
  grep -q "$N outputs rc=0" $L/chain.log && NEW="$NEW runs/outputs/$N.npz"
done
echo "new members:$NEW" >> $L/chain.log
csv() { echo $* | tr ' ' ','; }
vote() {  # vote NAME FILES...
  local name=$1; shift
  $P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(csv "$@") --vote_out=$R/vote_$name.json > $L/vote_$name.log 2>&1
  echo "vote $name rc=$? $(date -u +%T)" >> $L/chain.log
}
vote M $H $NEW
vote N $NEW
vote K7N $K7 $NEW
echo "votes done $(date -u +%T)" >> $L/chain.log
