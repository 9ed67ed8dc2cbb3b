"""What a run records as it trains: metrics.jsonl and TensorBoard event files beside it.

metrics.jsonl (one JSON object per finished epoch) is the record every tool reads.
DIR/tensorboard/ shows the same numbers in TensorBoard (`tensorboard --logdir runs/`),
written with tensorboardX, which needs no TensorFlow: at step `epoch`, each number of
the epoch's metrics.jsonl line under its key (`train_loss`, `validation_accuracy`,
`train_images_per_s`, ...), each per-member list of a stacked run as
`members/{i}/{key without "members_"}`, and the learning rate. TensorBoard stores
float32, so its values are metrics.jsonl's rounded to float32.

On resume both are rewritten from the checkpoint's metrics, so each finished epoch
appears once in each, whatever a killed process had written past its checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import sys
from typing import Callable

TENSORBOARD_DIR = "tensorboard"
MEMBERS_PREFIX = "members_"


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str, text: str) -> None:
    """`text` in `path`, whole or not at all: written to a temporary file of a unique
    name beside it (two writers of one path never share one), synced, renamed over
    `path`, and the directory synced so the rename survives a power cut."""
    with temp_beside(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def create_json_exclusive(path: str, obj) -> bool:
    """Writes `obj` to `path` only if no file is there: True if this call created it,
    False if one already existed (then it is left as it is). Of several processes
    trying at once exactly one creates it, and none sees a partial file: the JSON is
    written and synced under a temporary name, then hard-linked to `path`, which fails
    when `path` exists (O_EXCL where the file system has no hard links)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with temp_beside(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            return _create_exclusive(path, text)
    fsync_dir(os.path.dirname(path))
    return True


def _create_exclusive(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(path))
    return True


@contextlib.contextmanager
def temp_beside(path: str, suffix: str = ".tmp"):
    """A fresh file name in `path`'s directory, PATH.RANDOM.tmp, created empty and
    exclusively (no other writer can take it; the usual permissions, not mkstemp's
    0600), removed on leaving unless it was renamed away."""
    while True:
        tmp = f"{path}.{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_dir(directory: str) -> None:
    """Syncs a directory, making the renames and new files in it durable (a file's
    fsync does not cover its directory entry). File systems that cannot sync a
    directory are skipped."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def append_jsonl(path: str, obj) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def jsonl_text(records) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def tensorboard_scalars(record: dict) -> dict[str, float]:
    """{tag: value} of one metrics.jsonl line: every number but `epoch` under its key,
    and a per-member list `members_KEY` as `members/{i}/KEY`."""
    out = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool):
            continue
        if key.startswith(MEMBERS_PREFIX) and isinstance(value, list):
            for i, v in enumerate(value):
                out[f"members/{i}/{key[len(MEMBERS_PREFIX):]}"] = float(v)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported on use (as orbax is) and without torch:
    tensorboardX imports torch when it is installed, only to accept torch tensors,
    which a run never passes; that import alone takes seconds on a CPU."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None   # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class Recorder:
    """metrics.jsonl and tensorboard/ of one run directory, from the epochs a checkpoint
    holds on. `extra(epoch)` gives scalars TensorBoard shows beside each epoch's
    metrics (the learning rate). Without a directory (a multi-process run's process >
    0) it writes nothing; with tensorboard=False, metrics.jsonl only. A context
    manager: leaving it closes the event file."""

    def __init__(self, workdir: str | None, metrics, extra: Callable[[int], dict],
                 tensorboard: bool = True):
        self.path = workdir and os.path.join(workdir, "metrics.jsonl")
        self.extra, self.writer = extra, None
        if not workdir:
            return
        write_text_atomic(self.path, jsonl_text(metrics))
        logdir = os.path.join(workdir, TENSORBOARD_DIR)
        shutil.rmtree(logdir, ignore_errors=True)
        if not tensorboard:
            return
        self.writer = summary_writer_class()(logdir)
        for record in metrics:
            self._scalars(record)
        self.writer.flush()

    def add(self, record: dict) -> None:
        """One finished epoch: a synced line of metrics.jsonl, then its scalars."""
        if not self.path:
            return
        append_jsonl(self.path, record)
        if self.writer is not None:
            self._scalars(record)
            self.writer.flush()

    def _scalars(self, record: dict) -> None:
        epoch = record["epoch"]
        scalars = {**tensorboard_scalars(record), **self.extra(epoch)}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_records(workdir: str, metrics, extra: Callable[[int], dict] = lambda epoch: {}):
    """metrics.jsonl and tensorboard/ of a run directory whose epochs are `metrics`
    (such as one point of a vmapped sweep, split from its group's records)."""
    Recorder(workdir, metrics, extra).close()


def output_path_problem(path: str) -> str | None:
    """Why an output file cannot be written at `path` (its directory missing or not
    writable, or the path a directory), or None: checked before the work whose result
    it will hold, so a typo costs no evaluation or timing."""
    where = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{path} is a directory; give a file name"
    if not os.path.isdir(where):
        return f"no directory {where}; create it first"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"{where} is not writable; choose another directory"
    return None
