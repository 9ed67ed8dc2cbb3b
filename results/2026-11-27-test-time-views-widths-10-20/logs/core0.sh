#!/bin/bash
cd /work/main
export MNIST_DATA_DIR=/work/shared/data/mnist
P=/work/main/.venv/bin/python
L=results/2026-11-27-test-time-views-widths-10-20/logs
echo "s13 start $(date -u +%T)" >> $L/chain.log
taskset -c 0 $P run.py --config=experiments/modern.py:deep=1,bn=1,rot=10,zoom=0.1,elastic=36,esigma=6,tta=1 --config.seed=13 --config.eval_every=40 --workdir=runs/modern_deep_el36_s13 > $L/train_s13.log 2>&1
echo "s13 end rc=$? $(date -u +%T)" >> $L/chain.log
