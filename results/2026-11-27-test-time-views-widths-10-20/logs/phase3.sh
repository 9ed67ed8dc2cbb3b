#!/bin/bash
# The committees the plan fixed: F12 under T (the answer), F12 under A, F (ten) under T.
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-test-time-views-widths-10-20
L=$R/logs
until grep -q "phase2 core0 done" $L/chain.log; do sleep 20; done
while ! grep -q "phase2 core1 done" $L/chain.log; do
  if ! grep -q "w20 end" $L/chain.log && [ $(date -u +%H%M) -ge 0935 ]; then
    echo "w20 missed the 09:35 cut-off" >> $L/chain.log; break
  fi
  sleep 20
done
T=$($P -c "import json; print(json.load(open('$R/tta_choice.json'))['chosen'])")
OLD="s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10"
NEW="w10_s11"
[ -f runs/outputs/tta_A/modern_deep_el36_tv_w20_s12.npz ] && NEW="$NEW w20_s12"
files() {  # $1: views, rest: networks
  local X=$1; shift; local out=()
  for n in "$@"; do
    local f=runs/outputs/tta_$X/modern_deep_el36_tv_$n.npz
    if [ $X = A ] && [ ! -f $f ]; then f=runs/outputs/modern_deep_el36_tv_$n.npz; fi
    out+=($f)
  done
  (IFS=,; echo "${out[*]}")
}
$P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(files $T $OLD $NEW) --vote_out=$R/vote_F12_T.json > $L/vote_F12_T.log 2>&1
echo "vote F12_T ($T) rc=$? $(date -u +%T)" >> $L/chain.log
$P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(files A $OLD $NEW) --vote_out=$R/vote_F12_A.json > $L/vote_F12_A.log 2>&1
echo "vote F12_A rc=$? $(date -u +%T)" >> $L/chain.log
$P run.py --mode=vote --vote_rule=mean_softmax --vote_runs=$(files $T $OLD) --vote_out=$R/vote_F_T.json > $L/vote_F_T.log 2>&1
echo "vote F_T ($T) rc=$? $(date -u +%T)" >> $L/chain.log
