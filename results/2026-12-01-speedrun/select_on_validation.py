"""Validation accuracy of candidate speedrun recipes: five seeds trained as one stacked
(vmapped) program on the book's first 50,000 training images, evaluated on its 10,000
validation images; prints one JSON line per candidate (the lines of selection.jsonl).

    MNIST_DATA_DIR=... python results/2026-12-01-speedrun/select_on_validation.py \
        "c12k5c32k3f128:bs=128" "c10k5c20k3f100:bs=128,epochs=2,seed=105"

NAME:FIELDS, NAME a network (network() below), FIELDS keyword overrides of cfg() (mini-batch bs,
epochs, Adam's lr, b1, b2, warm-up fraction warm, shuffle, first seed seed) or of any
config field (eval_shifts=1). member_images_per_s is indicative: five members stacked,
on a machine shared with other jobs."""
import json
import os
import re
import sys
import time

import jax
import numpy as np

from mnist_cnn import data, driver, networks, train
from mnist_cnn.config import conv_pool, fc, softmax
from experiments import speedrun

DS = data.load("idx", os.environ["MNIST_DATA_DIR"], 50000)

def cfg(layers, epochs=1, bs=256, opt="adam", lr=0.01, b1=0.7, b2=0.9, warm=0.3,
        shuffle=True, runs=5, seed=100, **kw):
    c = speedrun.get_config()
    c.layers = layers
    c.num_epochs, c.batch_size, c.learning_rate = epochs, bs, lr
    c.optimizer = opt
    if opt == "adam":
        c.momentum, c.nesterov, c.adam_b1, c.adam_b2 = 0.0, False, b1, b2
    c.warmup_epochs = warm * epochs
    c.shuffle = shuffle
    c.num_runs = runs
    c.seed = seed
    c.train_on_validation = False
    for k, v in kw.items():
        c[k] = v
    return c

def evaluate(name, c):
    t0 = time.perf_counter()
    model = driver.build(c)
    plan = driver.Plan(c, model, DS)
    t1 = time.perf_counter()
    state = plan.place(plan.state)
    ttrain = 0
    for epoch in range(c.num_epochs):
        order = plan.placed_order(plan.state if epoch == 0 else plan.host(state), epoch)
        for start in range(0, plan.num_batches, plan.chunk_steps):
            ts = time.perf_counter()
            state, losses, _ = plan.train_chunk(state, order, start)
            jax.block_until_ready(state)
            ttrain += time.perf_counter() - ts
    host = plan.calibrated(plan.host(state))
    params = train.eval_params(host)
    val, per, _ = driver._evaluate(plan, params, DS.validation.images, DS.validation.labels)
    per = per or [val]
    mflop = networks.model_flops(model.layers)[1] / 1e6
    ips = plan.num_batches * c.batch_size * c.num_epochs * plan.members / ttrain
    print(json.dumps(dict(name=name, val_mean=round(100*np.mean(per), 3),
          val_min=round(100*min(per), 2), val_max=round(100*max(per), 2),
          mflop=round(mflop, 2), member_images_per_s=round(ips), compile_s=round(t1-t0, 1))),
          flush=True)

NET = re.compile(r"(bn_)?c(\d+)(?:k(\d+))?c(\d+)(?:k(\d+))?f(\d+)")


def network(name):
    """The layers a candidate's name spells, [bn_]c{maps}[k{kernel}]c{maps}[k{kernel}]f{units}:
    two conv + 2x2 max-pool + ReLU layers (kernel 5 where none is named; bn_: batch norm
    in both), an FC ReLU layer and a softmax of 10. The candidates of selection.jsonl:
    c8c16f100, c8k5c16k3f100, c10k5c20k3f100, c12k5c24k3f64, c12k5c24k3f128,
    c12k5c24k3f256, c8k5c24k3f256, c16k5c24k3f128, c12k5c32k3f128, c16k5c32k3f64,
    c16k5c32k3f128, c8k5c32k3f128, c10k5c32k3f128, c24k5c32k3f256, bn_c8c16f100,
    bn_c12k5c24k3f128, bn_c12k5c32k3f128."""
    m = NET.fullmatch(name)
    if m is None:
        raise SystemExit(f"error: {name!r} is not a network name such as c12k5c32k3f128")
    bn, maps1, k1, maps2, k2, units = m.groups()
    conv = lambda maps, k: conv_pool(int(maps), kernel=int(k or 5), activation="relu",
                                     batch_norm=bool(bn))
    return (conv(maps1, k1), conv(maps2, k2), fc(int(units), activation="relu"), softmax(10))


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        name, _, kw = spec.partition(":")
        kw = eval(f"dict({kw})")
        evaluate(spec, cfg(network(name), **kw))
