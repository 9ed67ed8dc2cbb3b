#!/bin/bash
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
L=results/2026-11-27-test-time-views-widths-10-20/logs
R="experiments/modern.py:deep=1,bn=1,rot=10,zoom=0.1,elastic=36,esigma=6,tta=1,trainval=1"
echo "w10 start $(date -u +%T)" >> $L/chain.log
taskset -c 1 $P run.py --config=$R,width=10 --config.seed=11 --config.eval_every=40 --workdir=runs/modern_deep_el36_tv_w10_s11 > $L/train_w10_s11.log 2>&1
echo "w10 end rc=$? $(date -u +%T)" >> $L/chain.log
echo "w20 start $(date -u +%T)" >> $L/chain.log
taskset -c 1 $P run.py --config=$R,width=20 --config.seed=12 --config.eval_every=40 --workdir=runs/modern_deep_el36_tv_w20_s12 > $L/train_w20_s12.log 2>&1
echo "w20 end rc=$? $(date -u +%T)" >> $L/chain.log
