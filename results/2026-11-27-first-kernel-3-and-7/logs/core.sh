#!/bin/bash
# One core's queue: train each network in turn (last one only if it starts before
# 11:35 UTC), then save its outputs (5 shift views) for the committees.
# usage: core.sh CORE K SEED...
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
R=results/2026-11-27-first-kernel-3-and-7
L=$R/logs
CORE=$1; K=$2; shift 2
first=1
for S in "$@"; do
  if [ $first = 0 ] && [ $(date -u +%H%M) -ge 1135 ]; then
    echo "k$K s$S not started: past 11:35 $(date -u +%T)" >> $L/chain.log; break
  fi
  first=0
  N=modern_deep_el36_tv_k${K}_s$S
  echo "$N start $(date -u +%T)" >> $L/chain.log
  taskset -c $CORE $P run.py --config=experiments/modern.py:deep=1,bn=1,rot=10,zoom=0.1,elastic=36,esigma=6,tta=1,trainval=1,k1=$K --config.seed=$S --config.eval_every=40 --workdir=runs/$N > $L/train_$N.log 2>&1
  echo "$N end rc=$? $(date -u +%T)" >> $L/chain.log
  taskset -c $CORE $P run.py --mode=vote --vote_rule=mean_softmax --vote_eval_shifts=1 --vote_runs=runs/$N --vote_out=$L/out_$N.json --vote_save_outputs=runs/outputs/$N.npz > $L/outputs_$N.log 2>&1
  echo "$N outputs rc=$? $(date -u +%T)" >> $L/chain.log
done
echo "core$CORE done $(date -u +%T)" >> $L/chain.log
