#!/bin/bash
# After s13: choose the test-time views on its validation (the plan's rule), then
# compute every committee network's outputs under them (core 0).
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-test-time-views-widths-10-20
L=$R/logs
until grep -q "s13 end" $L/chain.log; do sleep 20; done
echo "tta choice start $(date -u +%T)" >> $L/chain.log
declare -A V=( [A]="--vote_eval_shifts=1 --vote_eval_rotate=0 --vote_eval_zoom=0"
               [B]="--vote_eval_shifts=1 --vote_eval_rotate=5 --vote_eval_zoom=0"
               [C]="--vote_eval_shifts=1 --vote_eval_rotate=5 --vote_eval_zoom=0.05"
               [D]="--vote_eval_shifts=1 --vote_eval_rotate=10 --vote_eval_zoom=0.1" )
for X in A B C D; do
  taskset -c 0 $P run.py --mode=vote --vote_rule=mean_softmax ${V[$X]} --vote_runs=runs/modern_deep_el36_s13 --vote_out=$R/tta_$X.json > $L/tta_$X.log 2>&1
done
$P - > $R/tta_choice.json <<'PY'
import json
R = "results/2026-11-27-test-time-views-widths-10-20"
views = dict(A=5, B=7, C=9, D=9)
nll = {x: json.load(open(f"{R}/tta_{x}.json"))["votes"]["mean_softmax"]["validation_nll"]
       for x in "ABCD"}
best = min("ABCD", key=lambda x: (nll[x], views[x], x))
print(json.dumps(dict(rule="lowest validation cross-entropy, ties: fewer views",
                      validation_nll=nll, views=views, chosen=best), indent=1))
PY
T=$($P -c "import json; print(json.load(open('$R/tta_choice.json'))['chosen'])")
echo "tta chosen $T $(date -u +%T)" >> $L/chain.log
mkdir -p runs/outputs/tta_$T runs/outputs/tta_A
for N in modern_deep_el36_tv_s1 modern_deep_el36_tv_s2 modern_deep_el36_tv_s3 modern_deep_el36_tv_s4 modern_deep_el36_tv_s5 modern_deep_el36_tv_s6 modern_deep_el36_tv_w14_s7 modern_deep_el36_tv_w18_s8 modern_deep_el36_tv_w12_s9 modern_deep_el36_tv_w16_s10 WAIT_W10 modern_deep_el36_tv_w10_s11; do
  if [ $N = WAIT_W10 ]; then
    until grep -q "w10 end" $L/chain.log; do sleep 20; done
    continue
  fi
  if [ $T != A ]; then
    taskset -c 0 $P run.py --mode=vote --vote_rule=mean_softmax ${V[$T]} --vote_runs=runs/$N --vote_out=$L/out_${T}_$N.json --vote_save_outputs=runs/outputs/tta_$T/$N.npz > $L/outputs_${T}_$N.log 2>&1
    echo "outputs $T $N rc=$? $(date -u +%T)" >> $L/chain.log
  fi
done
# the new networks under A too (the old ones have theirs in runs/outputs/)
taskset -c 0 $P run.py --mode=vote --vote_rule=mean_softmax ${V[A]} --vote_runs=runs/modern_deep_el36_tv_w10_s11 --vote_out=$L/out_A_w10.json --vote_save_outputs=runs/outputs/tta_A/modern_deep_el36_tv_w10_s11.npz > $L/outputs_A_w10.log 2>&1
echo "outputs A w10 rc=$? $(date -u +%T)" >> $L/chain.log
echo "phase2 core0 done $(date -u +%T)" >> $L/chain.log
