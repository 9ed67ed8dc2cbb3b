"""Grid sweeps: the cross product of `--sweep=field=v1,v2,...` flags, one full run per
point in its own subdirectory of the sweep directory, resumable, splittable into shards
(`--sweep_shard=i/N`, for SLURM arrays or Kubernetes indexed jobs) and collected into
`sweep.csv`, `sweep.md` and `sweep.png`.

The grid is recorded in `DIR/sweep.json` by the first process to start; every later
process (a re-run, another shard, `--sweep_collect`) must ask for the same grid.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import os
import re

from mnist_cnn import config as config_lib
from mnist_cnn import metrics_io

GRID_FILE = "sweep.json"
_INDEX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


class SweepError(config_lib.ConfigError):
    """A sweep the user can fix; the message names the flag or field."""


def _walk(config, field: str):
    """(container, key) for a dotted field path with [i] indexing, e.g.
    'layers[2].features' -> (config.layers[2], 'features'). Raises SweepError."""
    node = config
    parts = field.split(".")
    for depth, part in enumerate(parts):
        m = _INDEX.match(part)
        if not m:
            raise SweepError(f"--sweep: bad field name {field!r}")
        name, index = m.group(1), m.group(2)
        last = depth == len(parts) - 1
        if not hasattr(node, "keys") or name not in node.keys():
            raise SweepError(f"--sweep: unknown config field {field!r} (python run.py "
                             f"--config=... --helpfull lists the config's fields)")
        if index is None:
            if last:
                return node, name
            node = node[name]
            continue
        seq = node[name]
        if not isinstance(seq, (list, tuple)) or int(index) >= len(seq):
            raise SweepError(f"--sweep: {field!r}: {name} has no element {index}")
        if last:
            raise SweepError(f"--sweep: {field!r} names a whole layer; sweep one of its "
                             f"fields, e.g. {field}.features")
        node = seq[int(index)]
    raise SweepError(f"--sweep: bad field name {field!r}")


def _parse_value(field: str, current, text: str):
    text = text.strip()
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    elif isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            pass
    elif isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            pass
    elif isinstance(current, str):
        if text:
            return text
    else:
        raise SweepError(f"--sweep: {field} ({type(current).__name__}) cannot be swept")
    raise SweepError(f"--sweep: {field} takes {type(current).__name__} values, got {text!r}")


def parse(specs: list[str], config) -> list[tuple[str, list]]:
    """['learning_rate=0.01,0.1', 'l2=0,1'] -> [(field, [typed values]), ...]."""
    axes = []
    for spec in specs:
        field, sep, values = spec.partition("=")
        field = field.strip()
        if not sep or not field:
            raise SweepError(f"--sweep={spec!r}: write --sweep=FIELD=V1,V2,...")
        node, key = _walk(config, field)
        texts = [v for v in values.split(",") if v.strip()]
        if not texts:
            raise SweepError(f"--sweep={spec!r}: no values for {field}")
        typed = [_parse_value(field, node[key], t) for t in texts]
        if len(set(map(repr, typed))) != len(typed):
            raise SweepError(f"--sweep={spec!r}: a value is repeated")
        if any(field == f for f, _ in axes):
            raise SweepError(f"--sweep: {field} is swept twice")
        axes.append((field, typed))
    if config.train_on_validation or any(f == "train_on_validation" for f, _ in axes):
        raise SweepError("--sweep ranks its points by validation accuracy, which "
                         "config.train_on_validation trains on: sweep without it, then "
                         "retrain the chosen point with it")
    return axes


def points(axes) -> list[dict]:
    """The cross product, the last axis varying fastest."""
    fields = [f for f, _ in axes]
    return [dict(zip(fields, combo)) for combo in itertools.product(*(v for _, v in axes))]


def point_dir(index: int, point: dict) -> str:
    """A readable, filesystem-safe subdirectory name, unique by its index."""
    parts = [f"{f.replace('[', '').replace(']', '')}={v}" for f, v in point.items()]
    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))[:150]
    return f"p{index:03d}_{name}"


def apply(config, point: dict):
    """A copy of config with the point's values set, validated."""
    c = copy.deepcopy(config)
    with c.unlocked():
        for field, value in point.items():
            node, key = _walk(c, field)
            node[key] = value
    config_lib.validate(c)
    return c


def parse_shard(spec: str | None) -> tuple[int, int]:
    if not spec:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise SweepError(f"--sweep_shard must be i/N with 0 <= i < N, got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def grid_record(config, axes) -> dict:
    return dict(axes=[[f, v] for f, v in axes], base_config=json.loads(config.to_json()))


def check_grid(workdir: str, record: dict) -> None:
    """Creates DIR/sweep.json, or checks that the one there describes the same grid.
    Created exclusively: of shards starting together exactly one records its grid, and
    the others are checked against it."""
    from mnist_cnn import driver
    path = os.path.join(workdir, GRID_FILE)
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        if metrics_io.create_json_exclusive(path, record):
            return
    try:
        with open(path) as f:
            stored = json.load(f)
        stored_axes, stored_base = stored["axes"], stored["base_config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SweepError(f"{path} is unreadable or damaged; move it away (with the "
                         f"sweep's points if its grid is unknown) or use a new "
                         f"--workdir") from None
    if stored_axes != record["axes"]:
        raise SweepError(f"{workdir} holds a sweep over a different grid "
                         f"({_axes_text(stored_axes)}, asked for "
                         f"{_axes_text(record['axes'])}); every shard and re-run must "
                         f"pass the same --sweep flags, or use a new --workdir")
    diff = driver.config_diff(stored_base, record["base_config"])
    if diff:
        raise SweepError(f"{workdir} holds a sweep of a different base config: "
                         f"{'; '.join(diff[:3])}")


def _axes_text(axes) -> str:
    return " x ".join(f"{f}={','.join(map(str, v))}" for f, v in axes)


def load_grid(workdir: str) -> list[tuple[str, list]]:
    path = os.path.join(workdir, GRID_FILE)
    try:
        with open(path) as f:
            return [(f, v) for f, v in json.load(f)["axes"]]
    except (OSError, ValueError, KeyError):
        raise SweepError(f"--sweep_collect: {path} is missing or unreadable; run the "
                         f"sweep (or one of its shards) in {workdir} first") from None


def rows(workdir: str, axes) -> tuple[list[dict], int]:
    """One row per finished point (sorted by validation accuracy, best first), and the
    number of points not finished yet."""
    out, missing = [], 0
    for i, point in enumerate(points(axes)):
        path = os.path.join(workdir, point_dir(i, point), "summary.json")
        if not os.path.exists(path):
            missing += 1
            continue
        with open(path) as f:
            s = json.load(f)
        out.append(dict(point=i, **point, best_validation_accuracy=s["best_validation_accuracy"],
                        test_accuracy=s["test_accuracy"], best_epoch=s["best_epoch"],
                        epochs=s["epochs_run"], wall_time_s=s["wall_time_s"],
                        dir=point_dir(i, point)))
    out.sort(key=lambda r: (-r["best_validation_accuracy"], r["point"]))
    return out, missing


def tables(table_rows: list[dict], axes) -> tuple[str, str]:
    """(csv text, markdown text)."""
    fields = [f for f, _ in axes]
    cols = fields + ["best_validation_accuracy", "test_accuracy", "best_epoch", "epochs",
                     "wall_time_s", "dir"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(table_rows)
    md = ["| " + " | ".join(fields) + " | best validation | test at that epoch | epoch "
          "| epochs | wall s |", "|" + "---|" * (len(fields) + 5)]
    for r in table_rows:
        md.append("| " + " | ".join(str(r[f]) for f in fields) +
                  f" | {100 * r['best_validation_accuracy']:.2f}% | "
                  f"{100 * r['test_accuracy']:.2f}% | {r['best_epoch']} | {r['epochs']} | "
                  f"{r['wall_time_s']:.0f} |")
    return buf.getvalue(), "\n".join(md) + "\n"


def write_outputs(workdir: str, axes) -> tuple[int, int]:
    """sweep.csv, sweep.md, sweep.png from every finished point; (finished, missing)."""
    from mnist_cnn import plots
    table_rows, missing = rows(workdir, axes)
    text_csv, text_md = tables(table_rows, axes)
    metrics_io.write_text_atomic(os.path.join(workdir, "sweep.csv"), text_csv)
    metrics_io.write_text_atomic(os.path.join(workdir, "sweep.md"), text_md)
    if table_rows:
        plots.sweep_plot(table_rows, axes, os.path.join(workdir, "sweep.png"))
    return len(table_rows), missing


# ---- vmapped sweeps ----

def vmap_field(field: str) -> bool:
    """A field a stacked program takes per run: the seed, or train.is_hyper_field
    (learning_rate, l2, momentum, a layer's dropout rate)."""
    from mnist_cnn import train
    return field == "seed" or train.is_hyper_field(field)


def vmappable(axes, config) -> bool:
    """True when every swept field is a per-run number a stacked program can take
    (seed, learning rate, l2, momentum, a layer's dropout rate): same architecture,
    batch size and data. Dropout rates need config.grad=autodiff (the hand-written
    backward pass of grad=manual takes its rates from the config): with grad=manual a
    dropout sweep runs its points one by one."""
    from mnist_cnn import train
    if config.grad == "manual" and any(train.DROPOUT_FIELD.fullmatch(f) for f, _ in axes):
        return False
    return (all(vmap_field(f) for f, _ in axes) and config.num_members == 1
            and config.num_runs == 1 and len(points(axes)) > 1)


def group_dir(workdir: str, indices) -> str:
    import hashlib
    tag = hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:10]
    return os.path.join(workdir, f"vmapped_{len(indices)}_{tag}")


def run_vmapped(config, workdir: str, axes, indices, overwrite=False, progress=None,
                log=print) -> None:
    """Trains the points `indices` of the grid as one stacked, vmapped program in a
    group directory (checkpointed and resumable like any run), then writes each point's
    directory (config.json, metrics.jsonl, summary.json) as a sequential run would."""
    from mnist_cnn import driver, train
    grid = points(axes)
    pending = [i for i in indices if overwrite or not os.path.exists(
        os.path.join(workdir, point_dir(i, grid[i]), "summary.json"))]
    if not pending:
        log(f"all {len(indices)} point(s) already finished")
        return
    hp = {f: [float(grid[i][f]) for i in pending] for f, _ in axes
          if train.is_hyper_field(f)}
    seeds = [int(grid[i].get("seed", config.seed)) for i in pending]
    group = group_dir(workdir, pending)
    base = copy.deepcopy(config)
    with base.unlocked():
        base.plots = False
    log(f"training {len(pending)} point(s) together (vmapped) in {group}")
    summary = driver.run(base, group, overwrite=overwrite, progress=progress, log=log,
                         hp=hp, seeds=seeds)
    with open(os.path.join(group, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    for k, i in enumerate(pending):
        _write_point(config, workdir, grid[i], i, metrics, k, summary, len(pending))


def _write_point(config, workdir, point, index, metrics, k, group_summary, together):
    from mnist_cnn import driver, metrics_io, train
    d = os.path.join(workdir, point_dir(index, point))
    os.makedirs(d, exist_ok=True)
    mine = [dict(epoch=m["epoch"], train_loss=m["members_train_loss"][k],
                 epoch_train_s=m["epoch_train_s"], trained_with=together) for m in metrics]
    for m, own in zip(metrics, mine):   # not every epoch was evaluated (eval_every)
        if "members_validation_accuracy" in m:
            own.update(validation_accuracy=m["members_validation_accuracy"][k],
                       test_accuracy=m["members_test_accuracy"][k])
    done = driver.evaluated(mine)
    b = train.best_epoch([m["validation_accuracy"] for m in done])
    summary = dict(name=config.name, test_accuracy=done[b]["test_accuracy"],
                   best_validation_accuracy=done[b]["validation_accuracy"],
                   best_epoch=done[b]["epoch"], epochs_run=len(mine),
                   final_test_accuracy=done[-1]["test_accuracy"],
                   wall_time_s=group_summary["wall_time_s"],
                   compile_time_s=group_summary["compile_time_s"],
                   vmapped_with=together,
                   diverged=any(m["train_loss"] != m["train_loss"] for m in mine),
                   **{k2: group_summary[k2] for k2 in ("data_source", "device",
                                                       "jax_version")},
                   **{k2: group_summary[k2] for k2 in ("dataset", "data_sha256")
                      if k2 in group_summary})
    own = apply(config, point)
    metrics_io.write_json_atomic(os.path.join(d, "config.json"), json.loads(own.to_json()))
    num_batches = train.steps_per_epoch(config_lib.num_train_images(own), own.batch_size)
    metrics_io.write_records(d, mine, driver.learning_rates(own, num_batches))
    metrics_io.write_json_atomic(os.path.join(d, "summary.json"), summary)
