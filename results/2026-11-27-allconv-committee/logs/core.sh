#!/bin/bash
# One core's queue: train each network in turn (each after the first only if it starts
# before 00:20 UTC), then save its outputs (5 shift views) for the committees.
# usage: core.sh CORE NAME:VARIANT:SEED ...   (VARIANT: extra modern.py arguments)
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-allconv-committee
L=$R/logs
CORE=$1; shift
first=1
for JOB in "$@"; do
  IFS=: read -r N V S <<< "$JOB"
  if [ $first = 0 ] && [ $(date -u +%H%M) -ge 0020 ] && [ $(date -u +%H%M) -lt 1200 ]; then
    echo "$N not started: past 00:20 $(date -u +%T)" >> $L/chain.log; break
  fi
  first=0
  echo "$N start $(date -u +%T)" >> $L/chain.log
  taskset -c $CORE $P run.py --config=experiments/modern.py:allconv=1,bn=1,p=0.4,rot=10,zoom=0.1,elastic=36,esigma=6,tta=1,trainval=1,epochs=25,$V --config.seed=$S --config.eval_every=40 --workdir=runs/$N > $L/train_$N.log 2>&1
  echo "$N end rc=$? $(date -u +%T)" >> $L/chain.log
  taskset -c $CORE $P run.py --mode=vote --vote_rule=mean_softmax --vote_eval_shifts=1 --vote_runs=runs/$N --vote_out=$L/out_$N.json --vote_save_outputs=runs/outputs/$N.npz > $L/outputs_$N.log 2>&1
  echo "$N outputs rc=$? $(date -u +%T)" >> $L/chain.log
done
echo "core$CORE done $(date -u +%T)" >> $L/chain.log
