"""The impure edge: run directory, data loading, checkpoints, signals, progress, files.

Everything a user can get wrong is checked before the run directory is touched:
config fields, the network's shapes, the run directory's state, the dataset.

A run directory holds config.json, metrics.jsonl (one line per finished epoch),
checkpoints/ (Orbax, the last `keep_checkpoints`), and at the end summary.json and
learning_curves.png. Re-running the same command on it resumes from the newest
checkpoint; the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import sys
import time

import jax
import numpy as np

from mnist_cnn import checkpoint, data, ensemble, networks, parallel, plots, train
from mnist_cnn import config as config_lib


class RunError(ValueError):
    """A run that cannot proceed for a reason the user can fix."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was saved."""

    def __init__(self, signum, epoch, step):
        self.signum, self.epoch, self.step = signum, epoch, step
        super().__init__(f"stopped by {signal.Signals(signum).name} in epoch {epoch} after "
                         f"step {step}; checkpoint saved: re-run the same command to resume")


RUN_FILES = ("metrics.jsonl", "summary.json", "config.json", "learning_curves.png",
             "errors.png", "filters.png")
# Fields that may change between a run and its resumption: where the data comes from.
# Fields a resumed run may change: where data comes from, bookkeeping, and how the work
# is laid out on devices (checkpoints are stored in the one-device layout).
RESUME_MAY_DIFFER = {"data_dir", "data_source", "download", "keep_checkpoints", "plots",
                     "eval_batch_size", "parallel", "num_devices"}


# ---- files ----

def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
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
    shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), ignore_errors=True)


@contextlib.contextmanager
def locked(workdir: str):
    """An exclusive flock on workdir/.lock; the kernel releases it if the process dies."""
    fd = os.open(os.path.join(workdir, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another process is running in --workdir {workdir}; wait for it "
                           f"to finish or choose another directory") from None
        yield
    finally:
        os.close(fd)


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the training loop checks between chunks."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum


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
    """A progress bar over one epoch's mini-batches, with images/s; stderr only on a tty."""

    def __init__(self, total_steps, batch_size, epoch, num_epochs, enabled=None, done=0):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.bs, self.done, self.start = total_steps, batch_size, done, done
        self.label = f"epoch {epoch}/{num_epochs}"
        self.t0 = time.perf_counter()

    def update(self, steps):
        self.done += steps
        if not self.enabled:
            return
        frac = self.done / self.total
        rate = (self.done - self.start) * self.bs / max(time.perf_counter() - self.t0, 1e-9)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                         f"{rate:,.0f} images/s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


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
    config_dict = json.loads(config.to_json())
    writer = jax.process_index() == 0   # in a multi-process run only process 0 writes
    mode = inspect_workdir(workdir, config_dict, overwrite) if writer else None
    mode = parallel.from_process_0(mode, ("fresh", "resume", "done"))
    if mode == "done":
        if not writer:
            return {}
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        log(f"{workdir} holds a finished run: test accuracy "
            f"{100 * summary['test_accuracy']:.2f}% (--overwrite to train again)")
        return summary
    ds = data.load(config.data_source, config.data_dir or None, config.train_size,
                   download=config.download, with_validation=config.train_on_validation)
    ds = data.preprocessed(ds, config.width_norm, config.deskew)
    plan = Plan(config, model, ds, hp, seeds)   # compiles, checks memory, before any write
    if not writer:
        with stop_on_signals() as stop:
            return _train(plan, None, stop, t_start, False, lambda *a: None)
    log(f"data: {ds.source}; train {plan.num_train}"
        f"{' (validation images included)' if config.train_on_validation else ''}, "
        f"validation {len(ds.validation)}, "
        f"test {len(ds.test)}; {plan.num_batches} mini-batches of {config.batch_size}"
        f"{f'; {plan.members} networks stacked' if plan.stacked else ''}; compiled in "
        f"{plan.compile_s:.1f} s on {_devices_text(plan)}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with locked(workdir), stop_on_signals() as stop:
            if mode == "fresh":
                clear_run(workdir)
                write_json_atomic(os.path.join(workdir, "config.json"), config_dict)
            return _train(plan, workdir, stop, t_start, progress, log)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise RunError(f"cannot write to --workdir {workdir}: {e.strerror}; free space "
                           f"or choose another directory, then re-run to resume") from None
        raise


def _devices_text(plan):
    kind = jax.devices()[0].device_kind
    if plan.par is None:
        return kind
    how = "members spread" if plan.par.spread_members else "data parallel, pmap"
    procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"{plan.devices} x {kind}{procs} ({how})"


def available_memory() -> int | None:
    """Bytes the default device can still hold (host RAM on CPU), None if unknown."""
    device = jax.devices()[0]
    if device.platform == "cpu":
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
        try:   # a vmapped sweep stays on one device
            self.par = None if self.hp else parallel.setup(config, self.members)
        except parallel.ParallelError as e:
            raise RunError(str(e)) from None
        self.devices = self.par.count if self.par else 1
        self.tx = train.make_optimizer(
            config, self.num_batches,
            momentum=float(config.momentum) if self.hp and "momentum" in self.hp else None)
        self.state = train.with_ema(
            train.init_states(model, self.tx, config.seed, self.members, seeds),
            config.ema_decay)
        train_x = jax.device_put(ds.train.images)
        train_y = jax.device_put(ds.train.labels)
        if config.expand_data:
            key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
            train_x, train_y = data.expand(train_x, train_y, key)
        self.train_x = parallel.place_data(self.par, train_x)
        self.train_y = parallel.place_data(self.par, train_y)
        t0 = time.perf_counter()
        order = parallel.place_order(self.par, self.order(self.state, 0))
        if self.par is None:
            lowered = train.make_train_chunk(model, self.tx, config, self.num_batches,
                                             self.stacked).lower(
                self.state, self.train_x, self.train_y, order, 0, num_steps=self.chunk_steps,
                hp=self.hp)
        else:
            fn = parallel.make_chunk(
                self.par, model, self.tx, config, self.num_batches, self.chunk_steps,
                self.stacked, with_order=order is not None)
            lowered = fn.lower(parallel.place(self.par, self.state), self.train_x,
                               self.train_y, order, 0)
        self.compiled = lowered.compile()
        if jax.process_count() > 1:
            # An AOT-compiled multi-process pmap expects global shapes; the pmap itself
            # takes each process's local arrays (and reuses the compilation).
            self.compiled = fn
        self.compile_s = time.perf_counter() - t0
        self.check_memory()
        self.predict = train.make_predict(model, config.eval_batch_size, self.stacked,
                                            config.eval_shifts, config.eval_rotate,
                                            config.eval_zoom)
        self.calibrate = None
        if config_lib.uses_batch_norm(config):
            self.calibrate = train.make_calibrate(model, stacked=self.stacked)
            self.calibration_x = jax.device_put(
                ds.train.images[:config.bn_calibration_images])

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
                                                start)
        return (state, parallel.losses_to_host(self.par, losses),
                parallel.losses_to_host(self.par, nlls))

    def check_memory(self):
        try:
            m = self.compiled.memory_analysis()
            need = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
        except Exception:   # not every backend reports it
            return
        free = available_memory()
        if free is not None and need > free:
            raise RunError(
                f"{self.members} stacked network(s) need about {need / 2**30:.1f} GiB to "
                f"train but {free / 2**30:.1f} GiB is free; use fewer members/runs "
                f"(--config.num_members / --config.num_runs) or a smaller batch_size")


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


def _train(plan, workdir, stop, t_start, progress, log) -> dict:
    config, ds = plan.config, plan.ds
    num_batches, chunk_steps = plan.num_batches, plan.chunk_steps
    ckpt_every = config.checkpoint_every_steps
    state = plan.state
    writer = workdir is not None    # None: a multi-process run's process > 0
    mngr = checkpoint.manager(workdir, config.keep_checkpoints) if writer else None
    at = dict(epoch=0, step_in_epoch=0, loss_sum=0.0, nll_sum=0.0, metrics=[],
              train_time_s=0.0, wall_time_s=0.0, compile_time_s=0.0)
    restored = checkpoint.restore_latest(mngr, state) if writer else None
    if restored is not None:
        state, at = restored
        where = (f"step {at['step_in_epoch']} of {num_batches} in epoch {at['epoch'] + 1}"
                 if at["step_in_epoch"] else f"the end of epoch {at['epoch']}")
        log(f"resuming from the checkpoint at {where}")
    if jax.process_count() > 1:   # every process continues from process 0's checkpoint
        state, at["epoch"], at["step_in_epoch"] = parallel.tree_from_process_0(
            (state, at["epoch"], at["step_in_epoch"]))
    metrics = at["metrics"]
    metrics_path = os.path.join(workdir, "metrics.jsonl") if writer else None
    if writer:
        write_text_atomic(metrics_path, "".join(json.dumps(m, sort_keys=True) + "\n"
                                                for m in metrics))
    val_x, val_y = jax.device_put(ds.validation.images), jax.device_put(ds.validation.labels)
    test_x, test_y = jax.device_put(ds.test.images), jax.device_put(ds.test.labels)
    compile_s = plan.compile_s

    def save(epoch_done, step_in_epoch, loss_sum, nll_sum, train_time):
        if not writer:
            return
        now = dict(epoch=epoch_done, step_in_epoch=step_in_epoch, loss_sum=loss_sum,
                   member_loss_sums=at.get("member_loss_sums") if step_in_epoch else None,
                   nll_sum=nll_sum, metrics=metrics, train_time_s=train_time,
                   wall_time_s=at["wall_time_s"] + time.perf_counter() - t_start,
                   compile_time_s=at["compile_time_s"] + compile_s)
        host_state = plan.host(state)
        checkpoint.save(mngr, int(np.max(host_state.step)), host_state, now)

    train_time = at["train_time_s"]
    predictions = None   # the last epoch's test predictions, for errors.png
    host_state, state = state, plan.place(state)
    for epoch in range(at["epoch"] + 1, config.num_epochs + 1):
        first = epoch == at["epoch"] + 1
        begin = at["step_in_epoch"] if first else 0
        loss_sum, nll_sum = (at["loss_sum"], at["nll_sum"]) if first else (0.0, 0.0)
        member_sums = np.zeros(plan.members)   # per stacked member, for members_train_loss
        if first and at.get("member_loss_sums") is not None:
            member_sums = np.asarray(at["member_loss_sums"], np.float64)
        order = plan.placed_order(host_state, epoch - 1)
        bar = Progress(num_batches, config.batch_size, epoch, config.num_epochs, progress,
                       done=begin)
        epoch_train_s = 0.0
        for start in range(begin, num_batches, chunk_steps):
            t_chunk = time.perf_counter()
            state, losses, nlls = plan.train_chunk(state, order, start)
            losses = np.asarray(losses, np.float64).reshape(-1, chunk_steps)
            epoch_train_s += time.perf_counter() - t_chunk
            finite = np.all(np.isfinite(losses), axis=0)
            # In a vmapped sweep a diverging run must not stop the others: its NaN
            # losses are reported as its own (members are independent under vmap).
            if not np.all(finite) and plan.hp is None:
                bad = int(np.argmin(finite))
                raise RunError(
                    f"training diverged: the loss became {losses[:, bad].max()} in epoch "
                    f"{epoch} at step {start + bad + 1} of {num_batches}; the last good "
                    f"checkpoint and metrics are kept; try a smaller --config.learning_rate "
                    f"(now {config.learning_rate})")
            # Training cost: summed over steps, averaged over stacked members.
            loss_sum += float(losses.sum()) / losses.shape[0]
            member_sums += losses.sum(axis=1)
            nll_sum += float(np.asarray(nlls, np.float64).sum()) / losses.shape[0]
            bar.update(chunk_steps)
            end = start + chunk_steps
            if end < num_batches and (stop.signum or (
                    ckpt_every and end // ckpt_every > start // ckpt_every)):
                at["member_loss_sums"] = member_sums.tolist() if plan.stacked else None
                save(epoch - 1, end, loss_sum, nll_sum, train_time + epoch_train_s)
                if stop.signum:
                    raise Interrupted(stop.signum, epoch, end)
        train_time += epoch_train_s
        images = (num_batches - begin) * config.batch_size * plan.members
        m = dict(epoch=epoch, train_loss=loss_sum / num_batches,
                 train_nll=nll_sum / num_batches, epoch_train_s=round(epoch_train_s, 3),
                 train_images_per_s=round(images / max(epoch_train_s, 1e-9), 1))
        if plan.stacked:
            m["members_train_loss"] = (member_sums / num_batches).tolist()
        if epoch % config.eval_every and epoch < config.num_epochs:
            # Not evaluated: batch-norm moments are calibrated for evaluation only (the
            # training step normalises by each batch's), so skipping changes no weight.
            host_state = plan.host(state)
            line = (f"epoch {epoch}: cost {m['train_loss']:.4f} (not evaluated: "
                    f"config.eval_every={config.eval_every}), "
                    f"{m['train_images_per_s']:,.0f} images/s")
        else:
            host_state = plan.calibrated(plan.host(state))
            if plan.calibrate is not None:
                state = plan.place(host_state)
            params = train.eval_params(host_state)
            val, val_members, _ = _evaluate(plan, params, val_x, val_y)
            test, test_members, predictions = _evaluate(plan, params, test_x, test_y)
            m.update(validation_accuracy=val, test_accuracy=test)
            if host_state.ema is not None:   # the raw weights too, for comparison
                m.update(raw_validation_accuracy=_evaluate(plan, host_state.params, val_x,
                                                           val_y)[0],
                         raw_test_accuracy=_evaluate(plan, host_state.params, test_x,
                                                     test_y)[0])
            if plan.stacked:
                m.update(members_validation_accuracy=val_members,
                         members_test_accuracy=test_members)
            members = (f" (members {', '.join(f'{100 * a:.2f}' for a in val_members)})"
                       if plan.stacked else "")
            raw = (f" (raw weights {100 * m['raw_validation_accuracy']:.2f}% / "
                   f"{100 * m['raw_test_accuracy']:.2f}%)" if "raw_test_accuracy" in m
                   else "")
            line = (f"epoch {epoch}: cost {m['train_loss']:.4f}, validation "
                    f"{100 * val:.2f}%{members}, test {100 * test:.2f}%{raw}, "
                    f"{m['train_images_per_s']:,.0f} images/s")
        metrics.append(m)
        save(epoch, 0, 0.0, 0.0, train_time)
        if writer:
            append_jsonl(metrics_path, m)
        log(line)
        if stop.signum:
            raise Interrupted(stop.signum, epoch, num_batches)

    summary = summarize(config, metrics, plan.members)
    images = num_batches * config.batch_size * len(metrics) * plan.members
    summary.update(
        wall_time_s=round(at["wall_time_s"] + time.perf_counter() - t_start, 2),
        compile_time_s=round(at["compile_time_s"] + compile_s, 2),
        train_images_per_s=round(images / max(train_time, 1e-9), 1),
        train_images=images, data_source=ds.source, device=jax.devices()[0].device_kind,
        devices=plan.devices,
        platform=jax.default_backend(), jax_version=jax.__version__)
    chosen = summary.get("chosen_run", 0)
    final = ensemble.member(host_state, chosen) if config.num_runs > 1 else host_state
    if predictions is None:   # resumed after the last epoch's checkpoint
        _, _, predictions = _evaluate(plan, train.eval_params(host_state), test_x, test_y)
    if config.num_runs > 1:
        predictions = predictions[chosen]
    summary["final_test_errors"] = int(np.sum(predictions != ds.test.labels))
    if not writer:
        return summary
    if config.plots:
        _figures(config, metrics, ds, predictions, final, workdir)
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    chosen_by = ("the last epoch (validation images trained on: they select nothing)"
                 if summary["selection"] == "last_epoch" else
                 f"best validation {100 * summary['best_validation_accuracy']:.2f}% at epoch "
                 f"{summary['best_epoch']}")
    log(f"{chosen_by}: test accuracy {100 * summary['test_accuracy']:.2f}%; "
        f"wall time {summary['wall_time_s']:.0f} s")
    return summary


def _figures(config, metrics, ds, predictions, final, workdir):
    plots.learning_curves(metrics, os.path.join(workdir, "learning_curves.png"),
                          title=config.name)
    done = data.preprocessing_text(config.width_norm, config.deskew)
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
