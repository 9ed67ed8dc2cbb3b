"""The impure edge: run directory, data loading, checkpoints, signals, progress, files.

Everything a user can get wrong is checked before the run directory is touched:
config fields, the network's shapes, the run directory's state, the dataset.

A run directory holds config.json, metrics.jsonl (one line per finished epoch),
tensorboard/ (the same numbers as TensorBoard event files, mnist_cnn/metrics_io.py),
checkpoints/ (Orbax, the last `keep_checkpoints`), and at the end summary.json and the
figures. Re-running the same command on it resumes from the newest checkpoint; the
result is bit-identical to an uninterrupted run.

The training loop reads as its steps: `_resume` (state and RunPosition from the newest
checkpoint), then per epoch `_train_steps`, `_evaluate_epoch`, `_checkpoint`, the
records and the log line (`_run_epoch`), and `_finish` (summary and figures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import tqdm

from mnist_cnn import augment, checkpoint, data, ensemble, metrics_io, networks, parallel
from mnist_cnn import plots, train
from mnist_cnn import config as config_lib


class RunError(ValueError):
    """A run that cannot proceed for a reason the user can fix."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was saved (saved=False: the run keeps
    none, config.keep_checkpoints=0)."""

    def __init__(self, signum, epoch, step, saved=True):
        self.signum, self.epoch, self.step = signum, epoch, step
        then = ("checkpoint saved: re-run the same command to resume" if saved else
                "no checkpoint kept (keep_checkpoints=0): re-running starts over")
        super().__init__(f"stopped by {signal.Signals(signum).name} in epoch {epoch} after "
                         f"step {step}; {then}")


def config_saves(config) -> bool:
    """Whether a run of `config` keeps checkpoints (keep_checkpoints=0: none)."""
    return config.keep_checkpoints > 0


RUN_FILES = ("metrics.jsonl", "summary.json", "config.json", "learning_curves.png",
             "errors.png", "filters.png")
# Fields a resumed run may change: where data comes from, bookkeeping, and how the work
# is laid out on devices (checkpoints are stored in the one-device layout).
MODES = ("fresh", "resume", "done")   # what inspect_workdir finds
RESUME_MAY_DIFFER = {"data_dir", "data_source", "download", "keep_checkpoints", "plots",
                     "tensorboard", "compile_cache",
                     "eval_batch_size", "parallel", "num_devices"}


# ---- config differences ----

def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
            for i, e in enumerate(v):
                out.update(_flatten(e, f"{key}[{i}]."))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every field that differs (ignoring RESUME_MAY_DIFFER). A
    field the old config lacks (added since it was saved) stands at its default there."""
    a, b = _flatten(config_lib.with_defaults(old)), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b))
            if k not in RESUME_MAY_DIFFER and a.get(k) != b.get(k)]


# ---- the run directory ----

def _writable_probe(workdir: str) -> str:
    probe = os.path.abspath(workdir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def inspect_workdir(workdir: str, config_dict: dict, overwrite: bool) -> str:
    """'fresh', 'resume' or 'done'; raises RunError when the directory cannot be used."""
    if not workdir:
        raise RunError("--workdir is required: the directory for this run's files")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunError(f"--workdir {workdir} exists and is not a directory")
    probe = _writable_probe(workdir)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"--workdir {workdir}: {probe} is not a writable directory")
    has_run = checkpoint.exists(workdir) or any(
        os.path.exists(os.path.join(workdir, f)) for f in RUN_FILES)
    if not has_run or overwrite:
        return "fresh"
    config_path = os.path.join(workdir, "config.json")
    try:
        with open(config_path) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        raise RunError(f"--workdir {workdir} holds run files but no readable config.json; "
                       f"choose a new directory or pass --overwrite") from None
    diff = config_diff(stored, config_dict)
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise RunError(f"--workdir {workdir} belongs to a different config: "
                       f"{'; '.join(diff[:3])}{more}; use a new --workdir, or --overwrite "
                       f"to start over")
    return "done" if os.path.exists(os.path.join(workdir, "summary.json")) else "resume"


def clear_run(workdir: str) -> None:
    for f in RUN_FILES:
        path = os.path.join(workdir, f)
        if os.path.exists(path):
            os.remove(path)
    for d in (checkpoint.CHECKPOINT_DIR, metrics_io.TENSORBOARD_DIR):
        shutil.rmtree(os.path.join(workdir, d), ignore_errors=True)


@contextlib.contextmanager
def locked(workdir: str):
    """An exclusive flock on workdir/.lock; the kernel releases it if the process dies."""
    fd = os.open(os.path.join(workdir, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        _flock(fd, fcntl.LOCK_EX, RunError(
            f"another process is running in --workdir {workdir}; wait for it to finish "
            f"or choose another directory"))
        yield
    finally:
        os.close(fd)


def _flock(fd: int, mode: int, busy: RunError) -> None:
    """flock(fd, mode) without waiting; `busy` raised when another process holds it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise busy from None


class RunBusy(RunError):
    """A run directory whose run is training: another process holds its lock."""


@contextlib.contextmanager
def read_locked(workdir: str):
    """A shared flock on workdir/.lock, for a process that only reads the run (a
    vote): RunBusy while a run trains there (it holds the lock exclusively), and no run
    can start training there until it is released. The lock file is opened read-only
    and never created: a directory without one was not trained by run.py and is read
    without a lock."""
    path = os.path.join(workdir, ".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        yield
        return
    try:
        _flock(fd, fcntl.LOCK_SH, RunBusy(
            f"{workdir} is training (it holds {path}): vote it when it finishes, or vote "
            f"its saved outputs"))
        yield
    finally:
        os.close(fd)


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the training loop checks between chunks."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum

    def agreed(self):
        """The signal to stop on, None if none: this process's, or in a multi-process
        run any process's. There it is a collective that every process calls at the same
        points of the loop, so all stop at the same chunk boundary, where process 0
        checkpoints: a signal to one process does not leave the others blocked."""
        if jax.process_count() == 1:
            return self.signum
        return parallel.max_over_processes(self.signum or 0) or None


@contextlib.contextmanager
def stop_on_signals():
    flag = StopFlag()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, flag)
        except ValueError:   # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Progress:
    """A tqdm bar over one epoch's mini-batches, with images/s, on `stream` (stderr);
    enabled None: shown when the stream is a terminal. A context manager: leaving it
    ends the bar's line."""

    FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
              "[{elapsed}<{remaining}{postfix}]")

    def __init__(self, total_steps, batch_size, epoch, num_epochs, enabled=None, done=0,
                 stream=None):
        stream = sys.stderr if stream is None else stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.batch_size, self.done, self.start = batch_size, done, done
        self.t0 = time.perf_counter()
        self.bar = tqdm.tqdm(total=total_steps, initial=done, file=stream,
                             desc=f"epoch {epoch}/{num_epochs}", bar_format=self.FORMAT,
                             disable=not self.enabled, dynamic_ncols=True)

    def update(self, steps):
        self.done += steps
        if not self.enabled:
            return
        images = (self.done - self.start) * self.batch_size
        rate = images / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} images/s", refresh=False)
        self.bar.update(steps)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- the compilation cache ----

COMPILE_CACHE_ENV = "MNIST_CNN_COMPILE_CACHE"


def compile_cache_dir(value: str, environ=None) -> str | None:
    """The folder config.compile_cache names, None for no cache: "auto" is
    $MNIST_CNN_COMPILE_CACHE when set ("" there: none), else the per-user
    $XDG_CACHE_HOME/mnist_cnn/jax (~/.cache/mnist_cnn/jax), beside the datasets'."""
    environ = os.environ if environ is None else environ
    if value == "auto":
        if COMPILE_CACHE_ENV not in environ:
            base = environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache")
            return os.path.join(base, "mnist_cnn", "jax")
        value = environ[COMPILE_CACHE_ENV]
    return os.path.abspath(os.path.expanduser(value)) if value else None


def _cache_folder(config, log) -> str | None:
    """compile_cache_dir's folder, created (private to the user) if new. One that
    cannot be created, or that every user may write to (anyone could leave code there
    that this process would run), is a RunError when named; the default's, a line
    saying the run compiles without a cache."""
    path = compile_cache_dir(config.compile_cache)
    if path is None:
        return None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if os.stat(path).st_mode & 0o002:
            raise OSError(errno.EACCES, "every user may write to it, so anyone could "
                          "put code there that this run would execute")
    except OSError as e:
        why = f"config.compile_cache: {path}: {e.strerror or e}"
        if config.compile_cache != "auto":
            raise RunError(f"{why}; pass a folder only you can write to, or "
                           f"--config.compile_cache= (empty) to compile without a "
                           f"cache") from None
        log(f"{why}; compiling without a cache")
        return None
    return path


def use_compile_cache(config, log=print) -> str | None:
    """Points JAX's persistent compilation cache at config.compile_cache's folder, or
    turns it off, before anything compiles; every program is stored however quickly it
    compiled, so a later run of the same programs loads them instead of compiling.
    Returns the folder (None: no cache)."""
    from jax.experimental.compilation_cache import compilation_cache
    path = _cache_folder(config, log)
    if path != jax.config.jax_compilation_cache_dir:
        compilation_cache.reset_cache()   # JAX opens its cache once: reopen it at path
        jax.config.update("jax_compilation_cache_dir", path)
    if path is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


# ---- the run ----

def build(config):
    """Validated config -> model; a network that does not fit 28x28 is a RunError."""
    config_lib.validate(config)
    model = networks.from_config(config)
    try:
        jax.eval_shape(lambda: networks.init_params(model, jax.random.PRNGKey(0)))
    except ValueError as e:
        raise RunError(f"config.layers do not fit a 28x28 image: {e}") from None
    return model


def run(config, workdir: str, overwrite: bool = False, progress=None, log=print,
        hp=None, seeds=None) -> dict:
    """Trains `config` in `workdir`, resuming from its newest checkpoint when there is one.
    Returns the summary. hp / seeds: a vmapped sweep's per-run hyperparameters
    ({field: [value per run]}, fields from train.HYPER_FIELDS and layers[i].dropout:
    train.is_hyper_field) and seeds, trained as
    one stacked program (mnist_cnn/sweep.py splits the results per run)."""
    t_start = time.perf_counter()
    model = build(config)
    use_compile_cache(config, log)
    config_dict = json.loads(config.to_json())
    writer = jax.process_index() == 0   # in a multi-process run only process 0 writes
    # A first look, to refuse or skip before loading and compiling; the decision that
    # counts is taken again under the run's lock (another process may have trained or
    # checkpointed here meanwhile).
    mode = inspect_workdir(workdir, config_dict, overwrite) if writer else None
    if parallel.from_process_0(mode, MODES) == "done":
        return _finished(workdir, log) if writer else {}
    t_load = time.perf_counter()
    ds = data.load(config.data_source, config.data_dir or None, config.train_size,
                   download=config.download, with_validation=config.train_on_validation,
                   dataset=config.dataset)
    ds = augment.preprocessed(ds, config.width_norm, config.deskew)
    t_plan = time.perf_counter()
    plan = Plan(config, model, ds, hp, seeds)   # compiles, checks memory, before any write
    plan.times.update(load=t_plan - t_load, plan=time.perf_counter() - t_plan)
    if not writer:
        if parallel.from_process_0(None, MODES) == "done":   # process 0's locked decision
            return {}
        with stop_on_signals() as stop:
            return _train(plan, None, stop, t_start, False, lambda *a: None)
    log(f"data: {data.describe(ds)}; train {plan.num_train}"
        f"{' (validation images included)' if config.train_on_validation else ''}, "
        f"validation {len(ds.validation)}, "
        f"test {len(ds.test)}; {plan.num_batches} mini-batches of {config.batch_size}"
        f"{f'; {plan.members} networks stacked' if plan.stacked else ''}; compiled in "
        f"{plan.compile_s:.1f} s on {_devices_text(plan)}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with locked(workdir), stop_on_signals() as stop:
            mode = parallel.from_process_0(
                inspect_workdir(workdir, config_dict, overwrite), MODES)
            if mode == "done":
                return _finished(workdir, log)
            if mode == "fresh":
                clear_run(workdir)
                metrics_io.write_json_atomic(os.path.join(workdir, "config.json"), config_dict)
            return _train(plan, workdir, stop, t_start, progress, log)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise RunError(f"cannot write to --workdir {workdir}: {e.strerror}; free space "
                           f"or choose another directory, then re-run to resume") from None
        raise


def _finished(workdir: str, log) -> dict:
    """The summary of the finished run in `workdir`, logged."""
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    log(f"{workdir} holds a finished run: test accuracy "
        f"{100 * summary['test_accuracy']:.2f}% (--overwrite to train again)")
    return summary


def _devices_text(plan):
    kind = jax.devices()[0].device_kind
    if plan.par is None:
        return kind
    how = "members spread" if plan.par.spread_members else "data parallel"
    how = f"{how}, {plan.par.kind}"
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"{plan.devices} x {kind}{procs} ({how})"


MEMINFO = "/proc/meminfo"


def mem_available(path: str | None = None) -> int | None:
    """MemAvailable of /proc/meminfo (MEMINFO), in bytes: what the kernel can hand out
    without swapping (free pages plus the page cache it can reclaim); None without it."""
    try:
        with open(path or MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes the default device can still hold (on a CPU the host's MemAvailable, else
    its free pages), None if unknown."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        available = mem_available()
        if available is not None:
            return available
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return None


class Plan:
    """Everything a run computes before it touches the run directory: sizes, the
    optimizer, the initial (possibly stacked) state, the compiled chunk, the predictor,
    and a memory check of the compiled program."""

    def __init__(self, config, model, ds, hp=None, seeds=None):
        self.config, self.model, self.ds = config, model, ds
        self.times = {}   # seconds this process spent per phase (summary's phase_time_s)
        self.members = len(seeds) if seeds is not None else max(config.num_members,
                                                                config.num_runs)
        self.hp = None if not hp else train.traced_hp(hp)
        self.keep = None if not hp else self.hp.get("keep")   # per-run dropout, for eval
        self.stacked = self.members > 1
        self.num_train = len(ds.train) * (5 if config.expand_data else 1)
        self.num_batches = train.steps_per_epoch(self.num_train, config.batch_size)
        every = config.checkpoint_every_steps
        self.chunk_steps = train.chunk_size(
            self.num_batches, min(config.chunk_steps, every or config.chunk_steps))
        try:   # a vmapped sweep spreads over devices under sharding only
            self.par = parallel.setup(config, self.members, sweep=bool(self.hp))
        except parallel.ParallelError as e:
            raise RunError(str(e)) from None
        self.devices = self.par.count if self.par else 1
        self.tx = train.make_optimizer(
            config, self.num_batches,
            momentum=float(config.momentum) if self.hp and "momentum" in self.hp else None)
        self.state = train.with_ema(
            train.init_states(model, self.tx, config.seed, self.members, seeds),
            config.ema_decay)
        self.train_x, self.train_y = self._training_data()
        self.compiled, self.compile_s = self._compile()
        self.predict = train.make_predict(model, config.eval_batch_size, self.stacked,
                                            config.eval_shifts, config.eval_rotate,
                                            config.eval_zoom)
        self.check_memory()
        self.calibrate = None
        if config_lib.uses_batch_norm(config):
            self.calibrate = train.make_calibrate(model, stacked=self.stacked)
            self.calibration_x = jax.device_put(
                ds.train.images[:config.bn_calibration_images])

    def _training_data(self):
        """The training images and labels placed on the device(s), with their four
        1-pixel shifts under config.expand_data."""
        train_x = jax.device_put(self.ds.train.images)
        train_y = jax.device_put(self.ds.train.labels)
        if self.config.expand_data:
            key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 7)
            train_x, train_y = augment.expand(train_x, train_y, key)
        return parallel.place_data(self.par, train_x), parallel.place_data(self.par, train_y)

    def _compile(self):
        """(the training chunk compiled ahead of time, the seconds that took)."""
        t0 = time.perf_counter()
        order = parallel.place_order(self.par, self.order(self.state, 0))
        if self.par is None:
            fn = train.make_train_chunk(self.model, self.tx, self.config, self.num_batches,
                                        self.stacked)
            compiled = fn.lower(self.state, self.train_x, self.train_y, order, 0,
                                num_steps=self.chunk_steps, hp=self.hp).compile()
            return compiled, time.perf_counter() - t0
        fn = parallel.make_chunk(
            self.par, self.model, self.tx, self.config, self.num_batches, self.chunk_steps,
            self.stacked, with_order=order is not None, with_hp=self.hp is not None)
        self.placed_hp = () if self.hp is None else (parallel.place_hp(self.par, self.hp),)
        compiled = fn.lower(parallel.place(self.par, self.state), self.train_x,
                            self.train_y, order, 0, *self.placed_hp).compile()
        if jax.process_count() > 1 and self.par.kind == "pmap":
            # An AOT-compiled multi-process pmap expects global shapes; the pmap itself
            # takes each process's local arrays (and reuses the compilation).
            compiled = fn
        return compiled, time.perf_counter() - t0

    def calibrated(self, host_state):
        """The host-layout state with its batch-norm moments measured (unchanged
        without batch norm)."""
        if self.calibrate is None:
            return host_state
        ema = host_state.ema
        return host_state.replace(
            params=self.calibrate(host_state.params, self.calibration_x),
            ema=None if ema is None else self.calibrate(ema, self.calibration_x))

    def order(self, state, epoch):
        """The epoch's permutation(s), from a host-layout state's key(s)."""
        if not self.config.shuffle:
            return None
        return train.epoch_order(state.key, epoch, self.num_train, self.stacked)

    def place(self, state):
        return parallel.place(self.par, state)

    def host(self, state):
        return parallel.host(self.par, state)

    def placed_order(self, host_state, epoch):
        return parallel.place_order(self.par, self.order(host_state, epoch))

    def train_chunk(self, state, order, start):
        """Runs chunk_steps mini-batches from `start`: (state, losses, nlls), the state
        in device layout, losses as (members, steps) or (steps,) numpy arrays."""
        if self.par is None:
            state, losses, nlls = self.compiled(state, self.train_x, self.train_y, order,
                                                start, hp=self.hp)
        else:
            state, losses, nlls = self.compiled(state, self.train_x, self.train_y, order,
                                                start, *self.placed_hp)
        return (state, parallel.losses_to_host(self.par, losses),
                parallel.losses_to_host(self.par, nlls))

    def check_memory(self):
        """Refuses, before anything is written, a run whose training chunk, or whose
        evaluation (eval_batch_size images x test-time views at a time, while the
        training state and data stay on the device), would not fit in the memory left:
        an evaluation that ran out of memory after an epoch would do so again on every
        resume."""
        trains = _memory_need(self.compiled)
        free = available_memory() if trains is not None else None
        if free is None:   # not every backend reports either
            return
        need = sum(trains)
        if need > free:
            raise RunError(
                f"{self.members} stacked network(s) need about {need / 2**30:.1f} GiB to "
                f"train but {free / 2**30:.1f} GiB is free; use fewer members/runs "
                f"(--config.num_members / --config.num_runs) or a smaller batch_size")
        evaluates = self._evaluation_need()
        if evaluates is not None and trains[0] + evaluates > free:
            c = self.config
            views = train.num_views(c.eval_shifts, c.eval_rotate, c.eval_zoom)
            fewer = (" or fewer test-time views (eval_shifts, eval_rotate, eval_zoom)"
                     if views > 1 else "")
            raise RunError(
                f"evaluating needs about {_size(trains[0] + evaluates)} ({c.eval_batch_size} "
                f"images x {views} view(s) at a time, beside the training state and data) "
                f"but {_size(free)} is free; use a smaller --config.eval_batch_size (now "
                f"{c.eval_batch_size}){fewer}")

    def _evaluation_need(self) -> int | None:
        """Bytes the evaluation of the validation or test images needs beyond the
        training's arguments: its compiled program's (ahead of time; the evaluation
        reuses the compilation) for the larger split, plus both splits on the device."""
        t0 = time.perf_counter()
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              train.eval_params(self.state))
        needs, on_device = [], 0
        for split in (s for s in (self.ds.validation, self.ds.test) if len(s)):
            images = jax.ShapeDtypeStruct(split.images.shape, split.images.dtype)
            on_device += split.images.nbytes + split.labels.nbytes
            try:
                compiled = self.predict.lower(params, images, self.keep).compile()
            except Exception:   # a backend that cannot compile ahead: not checked
                return None
            need = _memory_need(compiled)
            needs.append(None if need is None else sum(need))
        self.compile_s += time.perf_counter() - t0
        return None if not needs or None in needs else max(needs) + on_device


def _memory_need(compiled) -> tuple[int, int] | None:
    """(argument bytes, temporary + output bytes) of a compiled program by XLA's memory
    analysis, None where the backend reports none."""
    try:
        m = compiled.memory_analysis()
        return m.argument_size_in_bytes, m.temp_size_in_bytes + m.output_size_in_bytes
    except Exception:
        return None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _evaluate(plan, params, images, labels):
    """(accuracy of the run or ensemble, per-member accuracies or None, predictions)."""
    probs = np.asarray(plan.predict(params, images, plan.keep))
    labels = np.asarray(labels)
    if not plan.stacked:
        return train.accuracy(probs, labels), None, probs.argmax(-1)
    per = [train.accuracy(p, labels) for p in probs]
    if plan.config.num_members > 1:
        preds = np.asarray(ensemble.vote(plan.config.vote, probs))
        return float(np.mean(preds == labels)), per, preds
    return float(np.mean(per)), per, probs.argmax(-1)


# ---- the training loop ----

@dataclasses.dataclass(frozen=True)
class RunPosition:
    """Where a run stands, as each checkpoint records it (its JSON record): `epoch`
    epochs finished and `step_in_epoch` mini-batches of the next one, that partial
    epoch's summed training cost (`loss_sum`, `nll_sum`, and per stacked member
    `member_loss_sums`), the finished epochs' metrics.jsonl lines, and the seconds spent
    training, in all and compiling, by every process that has worked on the run."""

    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: float = 0.0
    member_loss_sums: tuple | None = None
    nll_sum: float = 0.0
    metrics: tuple = ()
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    compile_time_s: float = 0.0

    def to_dict(self) -> dict:
        """The checkpoint's JSON record: every field, in this order, tuples as lists."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        sums = self.member_loss_sums
        out.update(member_loss_sums=None if sums is None else list(sums),
                   metrics=list(self.metrics))
        return out

    @classmethod
    def from_dict(cls, record: dict) -> RunPosition:
        """A checkpoint's JSON record (one saved at the end of an epoch may lack
        member_loss_sums)."""
        sums = record.get("member_loss_sums")
        fields = {f.name: record[f.name] for f in dataclasses.fields(cls)
                  if f.name != "member_loss_sums"}
        return cls(**{**fields, "metrics": tuple(record["metrics"]),
                      "member_loss_sums": None if sums is None else tuple(sums)})

    def where(self, num_batches: int) -> str:
        if self.step_in_epoch:
            return f"step {self.step_in_epoch} of {num_batches} in epoch {self.epoch + 1}"
        return f"the end of epoch {self.epoch}"

    def within_epoch(self, step: int, sums: EpochSums, stacked: bool) -> RunPosition:
        """`step` mini-batches into the epoch in progress, its sums so far `sums`."""
        return dataclasses.replace(
            self, step_in_epoch=step, loss_sum=sums.loss, nll_sum=sums.nll,
            member_loss_sums=tuple(sums.members.tolist()) if stacked else None,
            train_time_s=self.train_time_s + sums.train_s)

    def after_epoch(self, record: dict, train_s: float) -> RunPosition:
        """At the end of the epoch in progress, whose metrics are `record`."""
        return dataclasses.replace(
            self, epoch=self.epoch + 1, step_in_epoch=0, loss_sum=0.0, nll_sum=0.0,
            member_loss_sums=None, metrics=self.metrics + (record,),
            train_time_s=self.train_time_s + train_s)


@dataclasses.dataclass
class EpochSums:
    """The epoch in progress: its training cost summed over steps (averaged over stacked
    members), per member, and the seconds this process has trained it."""

    loss: float
    nll: float
    members: np.ndarray
    train_s: float = 0.0

    @classmethod
    def at(cls, pos: RunPosition, members: int) -> EpochSums:
        per = (np.zeros(members) if pos.member_loss_sums is None
               else np.asarray(pos.member_loss_sums, np.float64))
        return cls(pos.loss_sum, pos.nll_sum, per)

    def add(self, losses: np.ndarray, nlls) -> None:
        """One chunk's losses and NLLs, (members, steps) float64."""
        self.loss += float(losses.sum()) / losses.shape[0]
        self.members += losses.sum(axis=1)
        self.nll += float(np.asarray(nlls, np.float64).sum()) / losses.shape[0]


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every epoch of one process uses: `workdir`, `mngr` and `records` are None
    on a multi-process run's process > 0, which trains in step and writes nothing;
    `base` is the position this process started from."""

    plan: Plan
    workdir: str | None
    mngr: Any
    records: metrics_io.Recorder
    base: RunPosition
    t_start: float
    stop: StopFlag
    progress: bool | None
    log: Callable
    validation: tuple   # (images, labels) on the device
    test: tuple

    def wall_time_s(self) -> float:
        return self.base.wall_time_s + time.perf_counter() - self.t_start

    def compile_time_s(self) -> float:
        return self.base.compile_time_s + self.plan.compile_s


def _train(plan, workdir, stop, t_start, progress, log) -> dict:
    """Trains from the newest checkpoint in `workdir` (or from the start) through
    config.num_epochs, then finishes the run. workdir None: a multi-process run's
    process > 0."""
    keep = plan.config.keep_checkpoints
    mngr = checkpoint.Lazy(workdir, keep) if workdir and keep else None
    state, pos = _resume(plan, mngr, log)
    on_device = lambda split: (jax.device_put(split.images), jax.device_put(split.labels))
    with metrics_io.Recorder(workdir, pos.metrics, learning_rates(
            plan.config, plan.num_batches, (plan.hp or {}).get("learning_rate")),
            tensorboard=plan.config.tensorboard) as records:
        ctx = _Context(plan, workdir, mngr, records, pos, t_start, stop, progress, log,
                       on_device(plan.ds.validation), on_device(plan.ds.test))
        host_state, state, predictions = state, plan.place(state), None
        for epoch in range(pos.epoch + 1, plan.config.num_epochs + 1):
            state, host_state, pos, tested = _run_epoch(ctx, state, host_state, pos, epoch)
            predictions = predictions if tested is None else tested
    return _finish(ctx, host_state, pos, predictions)


def _resume(plan, mngr, log):
    """(state, RunPosition) of the newest checkpoint, else the plan's initial state at
    the start; in a multi-process run every process continues from process 0's."""
    state, pos = plan.state, RunPosition()
    restored = _restore(mngr, state) if mngr else None
    if restored is not None:
        _check_same_data(plan.ds, restored.meta, mngr)
        _set_aside(mngr, restored, log)
        state, pos = restored.state, RunPosition.from_dict(restored.meta)
        log(f"resuming from the checkpoint at {pos.where(plan.num_batches)}")
    if jax.process_count() > 1:
        state, epoch, step = parallel.tree_from_process_0(
            (state, pos.epoch, pos.step_in_epoch))
        pos = dataclasses.replace(pos, epoch=epoch, step_in_epoch=step)
    return state, pos


def data_difference(record: dict, ds) -> list[str]:
    """'FILE: SHA-256 old... -> new...' for each file whose SHA-256 in a checkpoint's
    record differs from the data `ds` was loaded from; [] when either does not record
    them (a checkpoint written before runs recorded their data resumes unchecked)."""
    now = data.identity(ds).get("data_sha256")
    was = record.get("data_sha256")
    if not now or not isinstance(was, dict):
        return []
    return [f"{stem}: SHA-256 {str(was.get(stem))[:12]}... -> {sha[:12]}..."
            for stem, sha in now.items() if was.get(stem) != sha]


def _check_same_data(ds, record: dict, mngr) -> None:
    """A RunError when the checkpoint was trained on other files than `ds`'s."""
    diff = data_difference(record, ds)
    if diff:
        raise RunError(f"the checkpoint in {mngr.directory} was trained on other data "
                       f"than this run loads ({'; '.join(diff)}): resume it with the data "
                       f"it was trained on, or use a new --workdir")


def _restore(mngr, like):
    """The newest checkpoint that restores (checkpoint.Restored), or None if there is
    none; none restoring is a RunError (nothing is moved)."""
    try:
        return checkpoint.restore_fallback(mngr, like, check=RunPosition.from_dict)
    except checkpoint.RestoreError as e:
        raise RunError(f"{mngr.directory}: {e}; move that directory away and re-run "
                       f"to train from the start, or pass --overwrite") from None


def _set_aside(mngr, restored, log) -> None:
    """Each checkpoint newer than the one restored, which could not be, set aside
    (checkpoint.set_aside) with one line saying which step and why: the run trains
    those steps again. Done once the resume is known to go ahead."""
    for step, why in restored.skipped:
        name = checkpoint.set_aside(mngr, step)
        log(f"the checkpoint at step {step} cannot be restored ({why}): set aside as "
            f"{checkpoint.CHECKPOINT_DIR}/{name}; falling back to step {restored.step}, "
            f"the newest that restores")


def _run_epoch(ctx, state, host_state, pos, epoch):
    """Epoch `epoch` from where `pos` stands: train, evaluate (unless config.eval_every
    skips it), checkpoint, record, log. Returns (state, the host-layout state, the new
    position, the test predictions or None when not evaluated)."""
    plan = ctx.plan
    sums = EpochSums.at(pos, plan.members)
    state = _train_steps(ctx, state, host_state, pos, epoch, sums)
    record = _epoch_record(plan, epoch, pos.step_in_epoch, sums)
    predictions = None
    if _evaluates(plan.config, epoch):
        state, host_state, accuracies, predictions = _evaluate_epoch(ctx, state)
        record.update(accuracies)
    else:
        # Not evaluated: batch-norm moments are calibrated for evaluation only (the
        # training step normalises by each batch's), so skipping changes no weight.
        host_state = plan.host(state)
    pos = pos.after_epoch(record, sums.train_s)
    _checkpoint(ctx, state, pos)
    ctx.records.add(record)
    ctx.log(_epoch_line(record, plan.config.eval_every))
    signum = ctx.stop.agreed()
    if signum:
        raise Interrupted(signum, epoch, plan.num_batches, config_saves(plan.config))
    return state, host_state, pos, predictions


def _train_steps(ctx, state, host_state, pos, epoch, sums):
    """The epoch's mini-batches from pos.step_in_epoch on, a chunk at a time, each
    chunk's losses checked and added to `sums`; a checkpoint past every
    config.checkpoint_every_steps, and on a signal (then Interrupted)."""
    plan, config = ctx.plan, ctx.plan.config
    order = plan.placed_order(host_state, epoch - 1)
    every = config.checkpoint_every_steps
    with Progress(plan.num_batches, config.batch_size, epoch, config.num_epochs,
                  ctx.progress, done=pos.step_in_epoch) as bar:
        for start in range(pos.step_in_epoch, plan.num_batches, plan.chunk_steps):
            t_chunk = time.perf_counter()
            state, losses, nlls = plan.train_chunk(state, order, start)
            losses = np.asarray(losses, np.float64).reshape(-1, plan.chunk_steps)
            sums.train_s += time.perf_counter() - t_chunk
            _check_finite(plan, losses, epoch, start)
            sums.add(losses, nlls)
            bar.update(plan.chunk_steps)
            end = start + plan.chunk_steps
            if end < plan.num_batches:
                signum = ctx.stop.agreed()
                if signum or (every and end // every > start // every):
                    _checkpoint(ctx, state, pos.within_epoch(end, sums, plan.stacked))
                if signum:
                    raise Interrupted(signum, epoch, end, config_saves(config))
    return state


def _check_finite(plan, losses, epoch, start):
    """RunError naming the epoch and step where a chunk's loss stopped being finite. In
    a vmapped sweep a diverging run must not stop the others: its NaN losses are
    reported as its own (members are independent under vmap)."""
    finite = np.all(np.isfinite(losses), axis=0)
    if np.all(finite) or plan.hp is not None:
        return
    bad = int(np.argmin(finite))
    raise RunError(
        f"training diverged: the loss became {losses[:, bad].max()} in epoch {epoch} at "
        f"step {start + bad + 1} of {plan.num_batches}; the last good checkpoint and "
        f"metrics are kept; try a smaller --config.learning_rate "
        f"(now {plan.config.learning_rate})")


def _evaluates(config, epoch: int) -> bool:
    """Whether the epoch is evaluated: every config.eval_every-th and the last."""
    return not (epoch % config.eval_every and epoch < config.num_epochs)


def _epoch_record(plan, epoch, begin, sums) -> dict:
    """The epoch's metrics.jsonl line before evaluation: training cost (summed over
    steps, averaged over stacked members) and speed of the steps from `begin` on."""
    config, num_batches = plan.config, plan.num_batches
    images = (num_batches - begin) * config.batch_size * plan.members
    record = dict(epoch=epoch, train_loss=sums.loss / num_batches,
                  train_nll=sums.nll / num_batches, epoch_train_s=round(sums.train_s, 3),
                  train_images_per_s=round(images / max(sums.train_s, 1e-9), 1))
    if plan.stacked:
        record["members_train_loss"] = (sums.members / num_batches).tolist()
    return record


def _evaluate_epoch(ctx, state):
    """Validation and test accuracy of the state (its batch-norm moments calibrated
    first): (state, host-layout state, accuracies for the epoch's record, test
    predictions)."""
    plan = ctx.plan
    host_state = plan.calibrated(plan.host(state))
    if plan.calibrate is not None:
        state = plan.place(host_state)
    params = train.eval_params(host_state)
    t0 = time.perf_counter()
    val, val_members, _ = _evaluate(plan, params, *ctx.validation)
    t_test = time.perf_counter()
    test, test_members, predictions = _evaluate(plan, params, *ctx.test)
    plan.times["test_pass"] = time.perf_counter() - t_test   # the last epoch's counts
    plan.times["evaluate"] = plan.times.get("evaluate", 0.0) + time.perf_counter() - t0
    accuracies = dict(validation_accuracy=val, test_accuracy=test)
    if host_state.ema is not None:   # the raw weights too, for comparison
        accuracies.update(
            raw_validation_accuracy=_evaluate(plan, host_state.params, *ctx.validation)[0],
            raw_test_accuracy=_evaluate(plan, host_state.params, *ctx.test)[0])
    if plan.stacked:
        accuracies.update(members_validation_accuracy=val_members,
                          members_test_accuracy=test_members)
    return state, host_state, accuracies, predictions


def _epoch_line(record: dict, eval_every: int) -> str:
    """The log line of a finished epoch."""
    head = f"epoch {record['epoch']}: cost {record['train_loss']:.4f}"
    speed = f"{record['train_images_per_s']:,.0f} images/s"
    if "validation_accuracy" not in record:
        return f"{head} (not evaluated: config.eval_every={eval_every}), {speed}"
    percent = lambda key: f"{100 * record[key]:.2f}%"
    members = record.get("members_validation_accuracy")
    members = (f" (members {', '.join(f'{100 * a:.2f}' for a in members)})"
               if members is not None else "")
    raw = (f" (raw weights {percent('raw_validation_accuracy')} / "
           f"{percent('raw_test_accuracy')})" if "raw_test_accuracy" in record else "")
    return (f"{head}, validation {percent('validation_accuracy')}{members}, "
            f"test {percent('test_accuracy')}{raw}, {speed}")


def _checkpoint(ctx, state, pos: RunPosition) -> None:
    """Saves the state in the one-device layout with the position, its times brought
    up to now (process 0 only)."""
    if ctx.mngr is None:
        return
    host_state = ctx.plan.host(state)
    pos = dataclasses.replace(pos, wall_time_s=ctx.wall_time_s(),
                              compile_time_s=ctx.compile_time_s())
    with parallel.SAVING:   # a stop for another process's failure waits for the save
        checkpoint.save(ctx.mngr, int(np.max(host_state.step)), host_state,
                        {**pos.to_dict(), **data.identity(ctx.plan.ds)})


def learning_rates(config, num_batches: int, swept=None):
    """epoch -> TensorBoard scalars of the learning rate of the epoch's last mini-batch
    (train.make_schedule); with `swept` (a vmapped sweep's learning rates), each run's
    rate as members/{i}/learning_rate."""
    schedule = train.make_schedule(config, num_batches)
    rate = schedule if callable(schedule) else lambda step: schedule
    scales = None if swept is None else np.asarray(swept, np.float64) / config.learning_rate

    def scalars(epoch: int) -> dict:
        lr = float(rate(epoch * num_batches - 1))
        if scales is None:
            return {"learning_rate": lr}
        return {f"members/{i}/learning_rate": lr * s for i, s in enumerate(scales)}
    return scalars


# ---- the end of a run ----

def _finish(ctx, host_state, pos, predictions) -> dict:
    """The run's summary; process 0 also writes the figures and summary.json and logs
    the result."""
    summary, final, predictions = _summary(ctx, host_state, pos, predictions)
    if ctx.workdir is None:
        return summary
    config = ctx.plan.config
    if config.plots:
        _figures(config, list(pos.metrics), ctx.plan.ds, predictions, final, ctx.workdir)
    metrics_io.write_json_atomic(os.path.join(ctx.workdir, "summary.json"), summary)
    ctx.log(_result_line(summary))
    return summary


def _summary(ctx, host_state, pos, predictions):
    """(summary, the reported run's final state, its last test predictions)."""
    plan, config = ctx.plan, ctx.plan.config
    summary = summarize(config, list(pos.metrics), plan.members)
    images = plan.num_batches * config.batch_size * len(pos.metrics) * plan.members
    summary.update(
        wall_time_s=round(ctx.wall_time_s(), 2),
        compile_time_s=round(ctx.compile_time_s(), 2),
        train_images_per_s=round(images / max(pos.train_time_s, 1e-9), 1),
        train_images=images, data_source=plan.ds.source, **data.identity(plan.ds),
        device=jax.devices()[0].device_kind, devices=plan.devices,
        platform=jax.default_backend(), jax_version=jax.__version__,
        phase_time_s=_phase_times(ctx, pos))
    chosen = summary.get("chosen_run", 0)
    final = ensemble.member(host_state, chosen) if config.num_runs > 1 else host_state
    if predictions is None:   # resumed after the last epoch's checkpoint
        _, _, predictions = _evaluate(plan, train.eval_params(host_state), *ctx.test)
    if config.num_runs > 1:
        predictions = predictions[chosen]
    summary["final_test_errors"] = int(np.sum(predictions != plan.ds.test.labels))
    return summary, final, predictions


def _phase_times(ctx, pos) -> dict:
    """Seconds this process spent loading the data, planning (initialising and
    compiling: `compile` of them), training, evaluating (validation and test, every
    evaluated epoch) and on the last test pass alone, the training's among them."""
    times = dict(ctx.plan.times, compile=ctx.plan.compile_s,
                 train=pos.train_time_s - ctx.base.train_time_s)
    return {k: round(v, 3) for k, v in sorted(times.items())}


def _result_line(summary: dict) -> str:
    chosen_by = ("the last epoch (validation images trained on: they select nothing)"
                 if summary["selection"] == "last_epoch" else
                 f"best validation {100 * summary['best_validation_accuracy']:.2f}% at "
                 f"epoch {summary['best_epoch']}")
    return (f"{chosen_by}: test accuracy {100 * summary['test_accuracy']:.2f}%; "
            f"wall time {summary['wall_time_s']:.0f} s")


def _figures(config, metrics, ds, predictions, final, workdir):
    plots.learning_curves(metrics, os.path.join(workdir, "learning_curves.png"),
                          title=config.name)
    done = augment.preprocessing_text(config.width_norm, config.deskew)
    note = f"; digits {done}, as the network saw them" if done else ""
    plots.errors_grid(ds.test.images, ds.test.labels, predictions,
                      os.path.join(workdir, "errors.png"), note=note)
    params = train.eval_params(final)
    params = ensemble.member(params, 0) if config.num_members > 1 else params
    first = params[sorted(params, key=lambda k: int(k[5:].split("_")[0]))[0]]
    if first["w"].ndim == 4:
        plots.filters_grid(first["w"], os.path.join(workdir, "filters.png"))


def evaluated(metrics: list[dict]) -> list[dict]:
    """The epochs whose validation and test accuracies were measured (all of them
    unless config.eval_every > 1)."""
    return [m for m in metrics if "validation_accuracy" in m]


def _reported_epoch(config, vals: list[float]) -> int:
    """Index of the reported epoch: the best validation accuracy's (a later tie wins),
    or the last epoch when the validation images were trained on."""
    return len(vals) - 1 if config.train_on_validation else train.best_epoch(vals)


def _selected(config, metrics: list[dict], prefix: str = "") -> dict:
    """Test accuracy at the reported epoch of the `prefix` metrics ("" for the
    reported weights, "raw_" for the raw weights beside a weight average)."""
    metrics = evaluated(metrics)
    b = _reported_epoch(config, [m[prefix + "validation_accuracy"] for m in metrics])
    return {prefix + "test_accuracy": metrics[b][prefix + "test_accuracy"],
            prefix + "best_validation_accuracy": metrics[b][prefix + "validation_accuracy"],
            prefix + "best_epoch": metrics[b]["epoch"],
            prefix + "final_test_accuracy": metrics[-1][prefix + "test_accuracy"]}


def summarize(config, metrics: list[dict], members: int) -> dict:
    """The run's result: test accuracy at the best-validation epoch (a later tie wins),
    or at the last epoch with config.train_on_validation (selection: "last_epoch"; the
    best_* fields then name that epoch); for num_runs > 1 the run with the best
    validation accuracy, as the book kept."""
    epochs_run, metrics = len(metrics), evaluated(metrics)
    if config.num_runs > 1:
        runs = []
        for r in range(config.num_runs):
            vals = [m["members_validation_accuracy"][r] for m in metrics]
            b = train.best_epoch(vals)
            runs.append(dict(run=r, seed=config.seed + r, best_epoch=metrics[b]["epoch"],
                             best_validation_accuracy=vals[b],
                             test_accuracy=metrics[b]["members_test_accuracy"][r],
                             final_test_accuracy=metrics[-1]["members_test_accuracy"][r]))
        chosen = ensemble.best_run([r["best_validation_accuracy"] for r in runs])
        best = runs[chosen]
        return dict(name=config.name, test_accuracy=best["test_accuracy"],
                    best_validation_accuracy=best["best_validation_accuracy"],
                    best_epoch=best["best_epoch"], epochs_run=epochs_run,
                    final_test_accuracy=best["final_test_accuracy"], runs=runs,
                    chosen_run=chosen, selection="best_validation")
    out = dict(name=config.name, **_selected(config, metrics), epochs_run=epochs_run,
               selection="last_epoch" if config.train_on_validation else "best_validation")
    if "raw_validation_accuracy" in metrics[0]:   # the same selection for the raw weights
        out.update(_selected(config, metrics, "raw_"))
    if config.num_members > 1:
        b = _reported_epoch(config, [m["validation_accuracy"] for m in metrics])
        out.update(num_members=members, vote=config.vote,
                   members_test_accuracy=metrics[b]["members_test_accuracy"],
                   members_validation_accuracy=metrics[b]["members_validation_accuracy"])
    return out
