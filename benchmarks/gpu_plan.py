"""Every GPU measurement in one script with one deadline.

Time on a GPU machine often comes as a small, fixed budget, so the measurements are
prepared here, tested on the CPU with --plan=smoke, and run once on the GPU:

    python benchmarks/gpu_plan.py --out='results/{date}-{card}/' --budget=570 --data_dir=DIR

Steps, in the plan's order (most wanted first), each a subprocess with its own time
limit inside the budget, after an environment check (device, driver and package
versions, and every package the steps import; under --plan=full the run stops there if
jax sees no GPU; --wheels=DIR installs carried wheels first):

- speedrun: benchmarks/speedrun.py over a few seeds, cold (no compilation cache) and
  warm: process wall time and the in-run time the published records count, JSON;
- bench: `run.py --mode=benchmark` on dbl_conv_relu, JSON + Markdown: the training
  throughput at mini-batch 10/128/1024 in float32 and bfloat16 (bench_throughput), and
  `--parallels=none,pmap,sharding` at device counts 1 and every device present
  (bench_parallel: sharding against pmap; on one device both wrap the one-device step);
- train: a whole run (e.g. a vmapped committee of `modern` networks), stopped early,
  and reported as not measured, when its finished epochs project its end past the
  deadline;
- vote: `run.py --mode=vote` over runs trained earlier (in this call or an earlier call
  on the same warm machine: runs live in --runs_dir, outside OUT), skipped unless every
  one of them finished (wrote summary.json).

`--only=a,b` runs just the named steps: a second call on the same machine takes
what the first left.

What comes back in OUT (--out; {date} and {card} in it become the date and the device
kind, e.g. results/2026-12-01-nvidia-h200/): manifest.json (device kind and count,
date, package versions, the command, each step's status and seconds), log.txt
(everything every stage printed), the bench steps' JSON and Markdown, the speedrun and
vote steps' JSON, phases.md and phases.json (for every train run and speedrun process:
seconds in training against everything else, and the fraction outside training), and
runs.tar.gz (each run's config.json, metrics.jsonl, summary.json and figures).
Nothing is estimated: a stage that runs out of time says so in the log.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each plan is an ordered list of steps, most wanted first, each with a name that
# --only can pick (a second call on the same machine runs what the first left):
#   ("speedrun", name, dict)  benchmarks/speedrun.py: dict(seeds, overrides, limit),
#                             cold and warm, OUT/name.json
#   ("bench", name, sweep)    run.py --mode=benchmark on dbl_conv_relu, OUT/name.json
#                             and .md (repeats: 3 unless the sweep says); a sweep with
#                             "parallels" times those kinds at device counts 1 and all
#                             (bench_device_counts)
#   ("train", name, (experiment, extra flags))  a whole run, stopped early when its
#                             finished epochs project its end past the deadline
#   ("vote", name, ([train step names], rule))  run.py --mode=vote over those runs (a
#                             committee of every network they trained), OUT/name.json;
#                             rule: --vote_rule (None: auto, chosen on validation;
#                             runs trained on the validation images need a fixed one)
# The four-conv-layer elastic recipe retrained on all 60,000 images, five members
# vmapped, voting by the mean softmax (fixed: validation was trained on).
ENS5 = ["--config.num_members=5", "--config.vote=mean_softmax"]
# The committee preprocessings, in the order they are trained here: the original
# images, deskewed (Meier et al. 2011; the one preprocessing that moved a CPU committee,
# results/2026-11-27-deskewed-committee-p), then Ciresan et al. (2012)'s widths. Each
# ensemble gets seeds of its own: seven ensembles of five, Ciresan et al.'s 35 columns.
PREPROCESSINGS = {"deep_tv_orig_ens5": [], "deep_tv_dsk_ens5": ["--config.deskew=True"],
                  **{f"deep_tv_w{w}_ens5": [f"--config.width_norm={w}"]
                     for w in (18, 14, 16, 12, 20)}}
PRE_RUNS = list(PREPROCESSINGS)
# The all-convolutional network (experiments/allconv.py), whose four CPU-trained
# networks took a committee to 99.75% (results/2026-11-27-allconv-committee): a fresh
# committee of it alone, five members on the original and five on deskewed digits,
# seeds no run has used, named here before it trains.
ALLCONV = {"allconv_tv_ens5": ([], 900), "allconv_tv_dsk_ens5": (["--config.deskew=True"], 1000)}

# The short measurements, first in the full plan: the speedrun cold and warm, the
# training throughput table in both dtypes, sharding against pmap. A step stopped at
# its limit writes no JSON, so the limits are generous (each about twice the GPU time
# expected: 7 speedrun processes, 12 and 6 benchmark points); what is left of the
# budget goes to the committee runs.
SHORT_FULL = [
    ("speedrun", "speedrun", dict(seeds=3, overrides=[], limit=240)),
    ("bench", "bench_throughput", dict(batch_sizes="10,128,1024", conv_impls="xla,patches",
                                       dtypes="float32,bfloat16", bench_images=10240,
                                       limit=240)),
    ("bench", "bench_parallel", dict(batch_sizes="128,1024", conv_impls="xla",
                                     dtypes="float32", bench_images=10240,
                                     parallels="none,pmap,sharding", limit=150)),
]

PLANS = {
    # Most wanted first: the short measurements above; then ten fresh
    # all-convolutional members and their committee, fixed in advance; then five
    # vmapped four-conv members at each of seven preprocessings, whose committees of the
    # first two, four and seven ensembles are fixed in advance (a vote runs only over
    # finished runs).
    "full": [
        *SHORT_FULL,
        *[("train", name, ("allconv.py", [f"--config.seed={seed}", *ENS5, *extra]))
          for name, (extra, seed) in ALLCONV.items()],
        ("vote", "vote_ac10", (list(ALLCONV), "mean_softmax")),
        *[("train", name, ("four_conv_elastic.py",
                           [f"--config.seed={100 * (i + 2)}", *ENS5, *extra]))
          for i, (name, extra) in enumerate(PREPROCESSINGS.items())],
        ("vote", "vote_p2", (PRE_RUNS[:2], "mean_softmax")),
        ("vote", "vote_p4", (PRE_RUNS[:4], "mean_softmax")),
        ("vote", "vote_p7", (PRE_RUNS, "mean_softmax")),
    ],
    # The same kinds of step on a few hundred images, to test this script on the CPU.
    "smoke": [
        ("speedrun", "speedrun", dict(seeds=1, overrides=["train_size=256"], limit=150)),
        ("bench", "bench_throughput", dict(batch_sizes="10", conv_impls="patches",
                                           dtypes="float32,bfloat16", bench_images=256,
                                           repeats=1, limit=120)),
        ("bench", "bench_parallel", dict(batch_sizes="128", conv_impls="patches",
                                         dtypes="float32", bench_images=256,
                                         parallels="none,pmap,sharding", repeats=1,
                                         limit=120)),
        ("train", "book_ensemble", ("ensemble.py:members=2",
                                    ["--config.num_epochs=2", "--config.train_size=256",
                                     "--config.plots=True"])),
        ("train", "modern_1", ("modern.py:members=2,bn=1",
                               ["--config.num_epochs=3", "--config.augment_rotate=10.0",
                                "--config.augment_scale=0.1",
                                "--config.train_on_validation=True",
                                "--config.vote=mean_softmax", "--config.train_size=256"])),
        ("vote", "vote_both", (["book_ensemble", "modern_1"], "mean_softmax")),
    ],
}
# Every module the steps import, by pip name where it differs (the environment check
# names the missing ones and how to carry them).
REQUIRED = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax",
            "orbax.checkpoint": "orbax-checkpoint", "ml_collections": "ml_collections",
            "yaml": "PyYAML", "absl": "absl-py", "numpy": "numpy",
            "matplotlib": "matplotlib", "tqdm": "tqdm", "tensorboardX": "tensorboardX"}


class Runner:
    def __init__(self, out, budget, data_dir, runs_dir, t0=None):
        self.out, self.t0 = os.path.abspath(out), t0 or time.time()
        self.deadline = self.t0 + budget
        self.runs = os.path.abspath(runs_dir)
        self.steps = {}   # name -> status, exit code, process seconds (manifest, phases)
        self.info = {}    # the environment check's findings (device kind and count, date)
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(self.runs, exist_ok=True)
        self.log = open(os.path.join(self.out, "log.txt"), "a", buffering=1)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if data_dir:
            self.env["MNIST_DATA_DIR"] = os.path.abspath(data_dir)

    def left(self):
        return self.deadline - time.time()

    def say(self, msg):
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def start(self, name, args):
        self.say(f"start {name}: {' '.join(args)}")
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env,
                                stdout=self.log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def stop(self, proc, why):
        """SIGTERM (run.py saves a checkpoint and exits), then SIGKILL after 15 s."""
        self.say(f"stopping pid {proc.pid}: {why}")
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def record(self, name, status, started=None, code=None):
        """The step's outcome for the manifest and the phases table; returns code."""
        seconds = None if started is None else round(time.time() - started, 3)
        self.steps[name] = dict(status=status, exit=code, process_s=seconds)
        return code

    def run(self, name, args, limit, watch=None):
        """Runs one stage with min(limit, time left - 10 s). watch(proc, started) is
        called every 2 s and may return a reason to stop. Returns the exit code, or None
        when the stage was skipped or stopped."""
        limit = min(limit, self.left() - 10)
        if limit < 20:
            self.say(f"skip {name}: {self.left():.0f} s left")
            return self.record(name, "skipped")
        started = time.time()
        proc = self.start(name, args)
        while proc.poll() is None:
            try:
                proc.wait(2)   # returns at the exit: process_s is the process's time
                break
            except subprocess.TimeoutExpired:
                pass
            reason = (f"{name} reached its {limit:.0f} s limit"
                      if time.time() - started > limit else
                      watch(proc, started) if watch else None)
            if reason:
                self.stop(proc, reason)
                return self.record(name, "stopped", started)
        self.record(name, "done" if proc.returncode == 0 else "failed", started,
                    proc.returncode)
        self.say(f"end {name}: exit {proc.returncode} after {time.time() - started:.1f} s")
        return proc.returncode


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_file(path, text):
    """Written whole or not at all: a temporary file renamed into place."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# The environment check, run in a subprocess: each module of argv imported (its version,
# or its name among the missing), then the devices jax sees. One JSON line.
PROBE = r"""
import importlib, json, sys
out = dict(python=sys.version.split()[0], versions={}, missing=[])
for m in sys.argv[1:]:
    try:
        out["versions"][m] = str(getattr(importlib.import_module(m), "__version__", ""))
    except Exception:
        out["missing"].append(m)
try:
    out["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name"))
except Exception:
    out["cpu"] = "unknown"
if "jax" not in out["missing"]:
    import jax
    d = jax.devices()
    out.update(device_kind=d[0].device_kind, platform=d[0].platform,
               device_count=jax.local_device_count(), backend=jax.default_backend(),
               devices=[str(x) for x in d])
print(json.dumps(out))
"""


def probe_env(env, plan):
    """The environment check's findings: python, versions, missing (modules of
    REQUIRED), cpu, device_kind, device_count, platform, backend, nvidia_smi (under
    --plan=full), date; error when the check itself failed."""
    smi = ""
    if plan == "full":
        try:
            smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            smi = f"nvidia-smi: {e}"
    proc = subprocess.run([sys.executable, "-c", PROBE, *REQUIRED], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        info = dict(error=(proc.stderr.strip() or "no output")[-2000:])
    return dict(info, nvidia_smi=smi, date=time.strftime("%Y-%m-%d"))


def env_problem(info, plan):
    """None, or the one line that says why nothing can be measured and what to do."""
    if info.get("error"):
        return f"the environment check failed: {info['error']}"
    if info.get("missing"):
        names = " ".join(REQUIRED[m] for m in info["missing"])
        return (f"missing Python packages: {names}. On a machine with the internet and "
                f"this Python ({info.get('python')}): pip download {names} -d wheels/; "
                f"carry wheels/ here and run again with --wheels=wheels/")
    if plan == "full" and info.get("backend") != "gpu":
        return (f"jax sees no GPU (backend {info.get('backend')}): --plan=full measures "
                f"a GPU; --plan=smoke tests this script on a CPU")
    return None


def install_wheels(wheels, missing):
    """pip installs the missing packages (pip names) from the carried wheels in the
    folder `wheels`, without the internet; returns pip's last lines."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index",
                           f"--find-links={wheels}", *missing], capture_output=True,
                          text=True, timeout=300)
    text = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return f"pip install --no-index --find-links={wheels} {' '.join(missing)}: " + \
        " / ".join(text)


def card_slug(device_kind):
    """'NVIDIA H200' -> 'nvidia-h200': the device kind as a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", (device_kind or "unknown").lower()).strip("-")


def out_dir(template, info):
    """--out with {date} and {card} filled in from the environment check."""
    return template.replace("{date}", info["date"]).replace(
        "{card}", card_slug(info.get("device_kind")))


def check_environment(a):
    """(findings, notes for the log): the check, and after installing carried wheels
    for what it found missing (--wheels), the check again."""
    info, notes = probe_env(dict(os.environ), a.plan), []
    if info.get("missing") and a.wheels:
        notes.append(install_wheels(a.wheels, [REQUIRED[m] for m in info["missing"]]))
        info = probe_env(dict(os.environ), a.plan)
    return info, notes


def bench_device_counts(devices):
    """--device_counts of a bench step with parallels: one device and all of them."""
    return "1" if devices <= 1 else f"1,{devices}"


def stage_bench(s, name, b):
    """run.py --mode=benchmark on dbl_conv_relu: OUT/name.json, its table OUT/name.md."""
    out = os.path.join(s.out, name + ".json")
    extra = ([f"--parallels={b['parallels']}",
              f"--device_counts={bench_device_counts(s.info.get('device_count', 1))}"]
             if b.get("parallels") else [])
    args = ["run.py", "--mode=benchmark", "--config=experiments/dbl_conv_relu.py",
            f"--batch_sizes={b['batch_sizes']}", f"--conv_impls={b['conv_impls']}",
            f"--dtypes={b['dtypes']}", f"--bench_images={b['bench_images']}",
            f"--repeats={b.get('repeats', 3)}", *extra, f"--benchmark_out={out}"]
    code = s.run(name, args, b["limit"])
    result = read_json(out) if code == 0 else None
    if result:
        write_file(os.path.join(s.out, name + ".md"),
                   f"`python {' '.join(args)}`\n\n{result['table']}\n")
    return code


def stage_speedrun(s, name, b):
    """benchmarks/speedrun.py over b['seeds'] seeds, cold and warm: OUT/name.json."""
    return s.run(name, ["-m", "benchmarks.speedrun", f"--seeds={b['seeds']}",
                        f"--out={os.path.join(s.out, name + '.json')}",
                        *[f"--override={o}" for o in b.get("overrides", [])]],
                 b["limit"])


def stage_vote(s, name, runs, rule=None):
    dirs = [os.path.join(s.runs, r) for r in runs]
    missing = [r for r, d in zip(runs, dirs)
               if not os.path.isfile(os.path.join(d, "summary.json"))]
    if missing:   # a run stopped at the deadline keeps a checkpoint, not a summary
        s.say(f"skip {name}: no finished run for {', '.join(missing)}")
        return None
    return s.run(name, ["run.py", "--mode=vote", f"--vote_runs={','.join(dirs)}",
                        *([f"--vote_rule={rule}"] if rule else []),
                        f"--vote_out={os.path.join(s.out, name + '.json')}"], 150)


def epochs_done(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def epoch_seconds(seen, done):
    """Seconds an epoch of a run takes, estimated from what it has finished: the median
    wall time between epochs once three have been seen (one interval can hold a one-off
    such as compiling the predictor or writing the first checkpoint), before that the
    slowest finished epoch's training time plus 15% for evaluation and the checkpoint.
    seen: [(epochs done, time first seen)]; done: the run's metrics.jsonl records."""
    gaps = sorted((t1 - t0) / (n1 - n0) for (n0, t0), (n1, t1) in zip(seen, seen[1:]))
    if len(gaps) >= 2:
        mid = len(gaps) // 2
        return gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
    return 1.15 * max(d["epoch_train_s"] for d in done)


def pace_watch(s, workdir, epochs, margin):
    """Stops a run whose finished epochs project its end past the deadline (pace from
    epoch_seconds)."""
    seen = []   # (epochs done, time first seen)

    def watch(proc, started):
        done = epochs_done(workdir)
        if not done:
            return None
        if not seen or seen[-1][0] != len(done):
            seen.append((len(done), time.time()))
        per_epoch = epoch_seconds(seen, done)
        projected = (epochs - len(done)) * per_epoch
        if projected > s.left() - margin:
            return (f"{len(done)}/{epochs} epochs done, {per_epoch:.1f} s an epoch: "
                    f"{projected:.0f} s more would pass the deadline")
        return None
    return watch


def stage_train(s, name, exp, extra, margin=15):
    w = os.path.join(s.runs, name)
    watch = pace_watch(s, w, num_epochs(exp, extra), margin)
    return s.run(name, ["run.py", f"--config=experiments/{exp}", f"--workdir={w}",
                        "--overwrite", *extra], 100_000, watch)


def run_config(exp, extra):
    """The run's config exactly as run.py builds it from --config=experiments/EXP and
    the --config.FIELD=V flags of extra."""
    from mnist_cnn.committee_config import parse_config_flags
    return parse_config_flags([f"--config={os.path.join(ROOT, 'experiments', exp)}",
                               *extra])


def num_epochs(exp, extra):
    """The run's epoch count, from its config as run.py would build it."""
    return run_config(exp, extra).num_epochs


PHASES = ("load", "plan", "compile", "train", "evaluate", "test_pass")


def phase_row(run, process_s, in_run_s, phases):
    """A process's seconds in training (phase_time_s's train) against everything else:
    interpreter start and imports (outside the run: process_s - in_run_s), loading the
    data, initialising and compiling (plan, compile of it), evaluating, writing files."""
    train = phases["train"]
    outside = process_s - train
    return dict(run=run, process_s=round(process_s, 2), in_run_s=round(in_run_s, 2),
                train_s=round(train, 2), outside_training_s=round(outside, 2),
                fraction_outside=round(outside / process_s, 3),
                outside_run_s=round(process_s - in_run_s, 2),
                **{f"{k}_s": round(phases.get(k, 0.0), 2) for k in PHASES if k != "train"})


def phase_rows(s, steps):
    """A phases row for every train step that finished in this call (its summary.json,
    the process time measured here) and every speedrun process (speedrun.py's JSON)."""
    rows = []
    for kind, name, _ in steps:
        if s.steps.get(name, {}).get("status") != "done":
            continue
        if kind == "train":
            summary = read_json(os.path.join(s.runs, name, "summary.json")) or {}
            if "phase_time_s" in summary:
                rows.append(phase_row(name, s.steps[name]["process_s"],
                                      summary["wall_time_s"], summary["phase_time_s"]))
        elif kind == "speedrun":
            result = read_json(os.path.join(s.out, name + ".json")) or {}
            for mode, runs in result.get("runs", {}).items():
                rows += [phase_row(f"{name} {mode} seed {r['seed']}", r["wall_s"],
                                   r["wall_s"] - r["outside_run_s"],
                                   {k: r[f"{k}_s"] for k in PHASES}) for r in runs]
    return rows


def phases_markdown(rows, info):
    head = (f"Seconds of each process in training and outside it, "
            f"{info.get('device_kind')} ({info.get('cpu')}), {info.get('date')}, jax "
            f"{info.get('versions', {}).get('jax')}. Outside training: before the run "
            f"(interpreter, imports), loading the data, initialising and compiling "
            f"(plan, compile of it), evaluating, files.\n\n"
            "| run | process s | in the run s | training s | outside training s "
            "| outside fraction | before the run s | load s | plan s (compile) "
            "| evaluate s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['run']} | {r['process_s']:.2f} | {r['in_run_s']:.2f} | {r['train_s']:.2f} "
        f"| {r['outside_training_s']:.2f} | {100 * r['fraction_outside']:.1f}% | "
        f"{r['outside_run_s']:.2f} | {r['load_s']:.2f} | {r['plan_s']:.2f} "
        f"({r['compile_s']:.2f}) | {r['evaluate_s']:.2f} |\n" for r in rows)


def write_phases(s, rows):
    """OUT/phases.json and phases.md: this call's rows over an earlier call's."""
    path = os.path.join(s.out, "phases.json")
    new = {r["run"] for r in rows}
    rows = [r for r in (read_json(path) or {}).get("rows", []) if r["run"] not in new] + rows
    if not rows:
        return
    write_file(path, json.dumps(dict(device_kind=s.info.get("device_kind"),
                                     date=s.info.get("date"), rows=rows), indent=1))
    write_file(os.path.join(s.out, "phases.md"), phases_markdown(rows, s.info))
    s.say(f"wrote phases.md: {len(rows)} process(es)")


def write_manifest(s, a):
    """OUT/manifest.json: the device (kind and count, from jax), date, packages, and
    for each call the command and each step's status and seconds."""
    path = os.path.join(s.out, "manifest.json")
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(s.t0))
    calls = [c for c in (read_json(path) or {}).get("calls", [])
             if c.get("started") != started]
    calls.append(dict(started=started, argv=sys.argv[1:], plan=a.plan, budget_s=a.budget,
                      steps=s.steps))
    info = {k: v for k, v in s.info.items() if k != "missing"}
    write_file(path, json.dumps(dict(info, card=card_slug(s.info.get("device_kind")),
                                     calls=calls, files=sorted(os.listdir(s.out))),
                                indent=1))


def pack(s):
    """The small files of every run (no checkpoints) into OUT/runs.tar.gz."""
    keep = ("config.json", "metrics.jsonl", "summary.json", ".png")
    with tarfile.open(os.path.join(s.out, "runs.tar.gz"), "w:gz") as tar:
        for run in sorted(os.listdir(s.runs)):
            d = os.path.join(s.runs, run)
            for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                if f.endswith(keep):
                    tar.add(os.path.join(d, f), arcname=f"{run}/{f}")
    s.say("packed runs.tar.gz")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/{date}-{card}",
                    help="the folder for the results; {date} and {card} become the date "
                         "and the device kind (default results/{date}-{card})")
    ap.add_argument("--budget", type=float, default=570)
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--runs_dir", default="/tmp/gpu_plan_runs",
                    help="where runs (checkpoints included) are written; outside OUT so "
                         "a second call on the same machine finds them")
    ap.add_argument("--plan", choices=sorted(PLANS), default="full")
    ap.add_argument("--only", default="", help="comma-separated step names (default all)")
    ap.add_argument("--wheels", default="",
                    help="a folder of carried wheels: packages the check finds missing "
                         "are installed from it (pip --no-index) first")
    a = ap.parse_args(argv)
    names = {name for _, name, _ in PLANS[a.plan]}
    unknown = sorted({n for n in a.only.split(",") if n} - names)
    if unknown:
        ap.error(f"--only names steps not in plan {a.plan!r}: {', '.join(unknown)}")
    if a.wheels and not os.path.isdir(a.wheels):
        ap.error(f"--wheels={a.wheels}: no such folder")
    return a


def run_steps(s, steps, only):
    for kind, name, arg in steps:
        if only and name not in only:
            continue
        if kind == "bench":
            stage_bench(s, name, arg)
        elif kind == "speedrun":
            stage_speedrun(s, name, arg)
        elif kind == "vote":
            stage_vote(s, name, *arg)
        else:
            stage_train(s, name, *arg)


def main(argv=None):
    a = parse_args(argv)
    t0 = time.time()
    if ROOT not in sys.path:   # run_config reads configs with the package's code
        sys.path.insert(0, ROOT)
    info, notes = check_environment(a)
    s = Runner(out_dir(a.out, info), a.budget, a.data_dir, a.runs_dir, t0=t0)
    s.info = info
    for line in notes + [json.dumps(info)]:
        s.say(line)
    problem = env_problem(info, a.plan)
    write_manifest(s, a)
    if problem:
        s.say(f"environment check failed, nothing else run: {problem}")
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        run_steps(s, PLANS[a.plan], [n for n in a.only.split(",") if n])
    finally:
        write_phases(s, phase_rows(s, PLANS[a.plan]))
        pack(s)
        write_manifest(s, a)
        s.say(f"done, {s.left():.0f} s of the budget left; results in {s.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
