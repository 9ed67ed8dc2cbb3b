"""The impure edge: run directory, data loading, progress, metrics and summary files.

Everything a user can get wrong is checked before the run directory is touched:
config fields, the run directory's state, the dataset, the network's shapes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn import config as config_lib
from mnist_cnn import data, networks, plots, train


class RunError(ValueError):
    """A run that cannot proceed for a reason the user can fix."""


RUN_FILES = ("metrics.jsonl", "summary.json", "config.json", "learning_curves.png")


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_jsonl(path: str, obj) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_workdir(workdir: str, overwrite: bool) -> None:
    if not workdir:
        raise RunError("--workdir is required: the directory for this run's files")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunError(f"--workdir {workdir} exists and is not a directory")
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(workdir, f))]
    if existing and not overwrite:
        raise RunError(f"--workdir {workdir} already holds a run ({existing[0]}); "
                       f"choose a new directory or pass --overwrite")
    parent = os.path.dirname(os.path.abspath(workdir))
    probe = workdir if os.path.isdir(workdir) else parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"--workdir {workdir}: {probe} is not writable")


def prepare_workdir(workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    for f in RUN_FILES:
        path = os.path.join(workdir, f)
        if os.path.exists(path):
            os.remove(path)


class Progress:
    """A progress bar over one epoch's mini-batches, with images/s; stderr only on a tty."""

    def __init__(self, total_steps, batch_size, epoch, num_epochs, enabled=None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.bs, self.done = total_steps, batch_size, 0
        self.label = f"epoch {epoch}/{num_epochs}"
        self.t0 = time.perf_counter()

    def update(self, steps):
        self.done += steps
        if not self.enabled:
            return
        frac = self.done / self.total
        rate = self.done * self.bs / max(time.perf_counter() - self.t0, 1e-9)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                         f"{rate:,.0f} images/s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def build(config):
    """Validated config -> (model, optimizer factory inputs); shape errors as RunError."""
    config_lib.validate(config)
    model = networks.from_config(config)
    try:
        jax.eval_shape(lambda: networks.init_params(model, jax.random.PRNGKey(0)))
    except ValueError as e:
        raise RunError(f"config.layers do not fit a 28x28 image: {e}") from None
    return model


def run(config, workdir: str, overwrite: bool = False, progress=None,
        log=print) -> dict:
    """Trains `config`, writing metrics.jsonl, config.json, summary.json and
    learning_curves.png into `workdir`. Returns the summary."""
    t_start = time.perf_counter()
    model = build(config)
    check_workdir(workdir, overwrite)
    ds = data.load(config.data_source, config.data_dir or None, config.train_size,
                   download=config.download)
    prepare_workdir(workdir)
    write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json()))

    num_batches = train.steps_per_epoch(len(ds.train), config.batch_size)
    tx = train.make_optimizer(config, num_batches)
    state = train.init_state(model, tx, config.seed)
    chunk_steps = train.chunk_size(num_batches, config.chunk_steps)
    chunk_fn = train.make_train_chunk(model, tx, config, num_batches)
    evaluate = train.make_eval(model, config.eval_batch_size)

    train_x, train_y = jax.device_put(ds.train.images), jax.device_put(ds.train.labels)
    val_x, val_y = jax.device_put(ds.validation.images), jax.device_put(ds.validation.labels)
    test_x, test_y = jax.device_put(ds.test.images), jax.device_put(ds.test.labels)

    order0 = (train.shuffle_order(state.key, 0, len(ds.train)) if config.shuffle else None)
    t0 = time.perf_counter()
    compiled = chunk_fn.lower(state, train_x, train_y, order0, 0,
                              num_steps=chunk_steps).compile()
    compile_s = time.perf_counter() - t0
    log(f"data: {ds.source}; train {len(ds.train)}, validation {len(ds.validation)}, "
        f"test {len(ds.test)}; {num_batches} mini-batches of {config.batch_size}; "
        f"compiled in {compile_s:.1f} s on {jax.devices()[0].device_kind}")

    metrics, train_time = [], 0.0
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    for epoch in range(1, config.num_epochs + 1):
        order = (train.shuffle_order(state.key, epoch - 1, len(ds.train))
                 if config.shuffle else None)
        bar = Progress(num_batches, config.batch_size, epoch, config.num_epochs, progress)
        t_epoch = time.perf_counter()
        loss_sum = nll_sum = 0.0
        for start in range(0, num_batches, chunk_steps):
            state, loss, nll = compiled(state, train_x, train_y, order, start)
            loss, nll = float(loss), float(nll)
            loss_sum, nll_sum = loss_sum + loss, nll_sum + nll
            bar.update(chunk_steps)
            if not math.isfinite(loss):
                raise RunError(f"training diverged: the loss became {loss} in epoch {epoch} "
                               f"(steps {start}-{start + chunk_steps}); try a smaller "
                               f"--config.learning_rate (now {config.learning_rate})")
        epoch_train_s = time.perf_counter() - t_epoch
        train_time += epoch_train_s
        val_correct, _ = evaluate(state.params, val_x, val_y)
        test_correct, _ = evaluate(state.params, test_x, test_y)
        m = dict(epoch=epoch, train_loss=loss_sum / num_batches,
                 train_nll=nll_sum / num_batches,
                 validation_accuracy=int(val_correct) / len(ds.validation),
                 test_accuracy=int(test_correct) / len(ds.test),
                 epoch_train_s=round(epoch_train_s, 3),
                 train_images_per_s=round(num_batches * config.batch_size / epoch_train_s, 1))
        metrics.append(m)
        append_jsonl(metrics_path, m)
        log(f"epoch {epoch}: cost {m['train_loss']:.4f}, validation "
            f"{100 * m['validation_accuracy']:.2f}%, test {100 * m['test_accuracy']:.2f}%, "
            f"{m['train_images_per_s']:,.0f} images/s")

    best = train.best_epoch([m["validation_accuracy"] for m in metrics])
    summary = dict(
        name=config.name,
        test_accuracy=metrics[best]["test_accuracy"],
        best_validation_accuracy=metrics[best]["validation_accuracy"],
        best_epoch=metrics[best]["epoch"],
        epochs_run=len(metrics),
        final_test_accuracy=metrics[-1]["test_accuracy"],
        wall_time_s=round(time.perf_counter() - t_start, 2),
        compile_time_s=round(compile_s, 2),
        train_images_per_s=round(num_batches * config.batch_size * len(metrics)
                                 / train_time, 1),
        train_images=num_batches * config.batch_size * len(metrics),
        data_source=ds.source,
        device=jax.devices()[0].device_kind,
        platform=jax.default_backend(),
        jax_version=jax.__version__,
    )
    plots.learning_curves(metrics, os.path.join(workdir, "learning_curves.png"),
                          title=config.name)
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    log(f"best validation {100 * summary['best_validation_accuracy']:.2f}% at epoch "
        f"{summary['best_epoch']}: test accuracy {100 * summary['test_accuracy']:.2f}%; "
        f"wall time {summary['wall_time_s']:.0f} s")
    return summary
