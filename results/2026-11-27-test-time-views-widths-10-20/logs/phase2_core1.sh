#!/bin/bash
# After w20 (and the choice of views): its outputs under T and A, then the committees.
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-test-time-views-widths-10-20
L=$R/logs
until grep -q "w20 end" $L/chain.log && grep -q "tta chosen" $L/chain.log; do sleep 20; done
T=$($P -c "import json; print(json.load(open('$R/tta_choice.json'))['chosen'])")
declare -A V=( [A]="--vote_eval_shifts=1 --vote_eval_rotate=0 --vote_eval_zoom=0"
               [B]="--vote_eval_shifts=1 --vote_eval_rotate=5 --vote_eval_zoom=0"
               [C]="--vote_eval_shifts=1 --vote_eval_rotate=5 --vote_eval_zoom=0.05"
               [D]="--vote_eval_shifts=1 --vote_eval_rotate=10 --vote_eval_zoom=0.1" )
N=modern_deep_el36_tv_w20_s12
if [ -f runs/$N/summary.json ]; then
  for X in $(echo $T A | tr ' ' '\n' | sort -u); do
    taskset -c 1 $P run.py --mode=vote --vote_rule=mean_softmax ${V[$X]} --vote_runs=runs/$N --vote_out=$L/out_${X}_$N.json --vote_save_outputs=runs/outputs/tta_$X/$N.npz > $L/outputs_${X}_$N.log 2>&1
    echo "outputs $X $N rc=$? $(date -u +%T)" >> $L/chain.log
  done
fi
echo "phase2 core1 done $(date -u +%T)" >> $L/chain.log
