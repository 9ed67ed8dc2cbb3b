#!/bin/bash
# The committees fixed in the plan, once both queues are done or at 23:00 UTC (a
# network still training then is stopped and does not join).
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-deskewed-width-committee-r
L=$R/logs
until { grep -q "core0 done" $L/chain.log && grep -q "core1 done" $L/chain.log; } || [ $(date -u +%H%M) -ge 2300 ]; do sleep 20; done
if ! { grep -q "core0 done" $L/chain.log && grep -q "core1 done" $L/chain.log; }; then
  echo "cut-off 23:00 reached; stopping what still trains $(date -u +%T)" >> $L/chain.log
  pkill -f "core.sh"; pkill -f "workdir=runs/modern_deep_el36_tv_k7_dsk_w"; sleep 5
fi
# P, the seventeenth session's committee: M's 21 networks and the six deskewed ones.
PC=""
for n in s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10 k3_s21 k3_s23 k7_s22 k7_s24 k7_s26 k7_e80_s31 k7_e80_s32 k7_l2_s33 k7_l2_s34; do PC="$PC runs/outputs/modern_deep_el36_tv_$n.npz"; done
for n in w10_s11 w20_s12; do PC="$PC runs/outputs/tta_A/modern_deep_el36_tv_$n.npz"; done
for s in 41 42 43 44 45 46; do PC="$PC runs/outputs/modern_deep_el36_tv_k7_dsk_s$s.npz"; done
NEW=""
for j in w14_s61 w16_s62 w18_s63 w12_s64 w10_s65 w20_s66; do
  N=modern_deep_el36_tv_k7_dsk_$j
  grep -q "$N outputs rc=0" $L/chain.log && NEW="$NEW runs/outputs/$N.npz"
done
echo "new members:$NEW" >> $L/chain.log
csv() { echo $* | tr ' ' ','; }
vote() {  # vote NAME FILES...
  local name=$1; shift
  $P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(csv "$@") --vote_out=$R/vote_$name.json > $L/vote_$name.log 2>&1
  echo "vote $name rc=$? $(date -u +%T)" >> $L/chain.log
}
vote R $PC $NEW
vote DW $NEW
echo "votes done $(date -u +%T)" >> $L/chain.log
