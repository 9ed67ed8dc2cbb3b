"""Every GPU measurement in one script with one deadline.

Time on a GPU machine often comes as a small, fixed budget, so the measurements are
prepared here, tested on the CPU with --plan=smoke, and run once on the GPU:

    python benchmarks/gpu_plan.py --out=OUT --budget=570 [--data_dir=DIR]

Steps, in the plan's order (most wanted first), each a subprocess of run.py with its
own time limit inside the budget, after an environment check (device, driver and
package versions; under --plan=full the run stops there if jax sees no GPU):

- train: a whole run (e.g. a vmapped committee of `modern` networks), stopped early,
  and reported as not measured, when its finished epochs project its end past the
  deadline;
- bench: `run.py --mode=benchmark` for dbl_conv_relu over mini-batch 10/128/1024, conv
  patches/xla, float32 and bfloat16, Markdown + JSON;
- vote: `run.py --mode=vote` over runs trained earlier (in this call or an earlier call
  on the same warm machine: runs live in --runs_dir, outside OUT), skipped unless every
  one of them finished (wrote summary.json);
- speedrun: experiments/speedrun.py, end-to-end wall time.

`--only=a,b` runs just the named steps: a second call on the same machine takes
what the first left.

What comes back in OUT: log.txt (everything every stage printed), the bench and vote
steps' JSON, and runs.tar.gz (each run's config.json, metrics.jsonl, summary.json and figures).
Nothing is estimated: a stage that runs out of time says so in the log.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each plan is an ordered list of steps, most wanted first, each with a name that
# --only can pick (a second call on the same machine runs what the first left):
#   ("bench", name, sweep)    run.py --mode=benchmark on dbl_conv_relu
#   ("speedrun", name, (seed, extra flags))  experiments/speedrun.py end to end
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

PLANS = {
    # Most wanted first: ten fresh all-convolutional members and their committee, fixed
    # in advance; then five vmapped four-conv members at each of seven preprocessings,
    # whose committees of the first two, four and seven ensembles are fixed in advance
    # (a vote runs only over finished runs); then two speedrun seeds.
    "full": [
        *[("train", name, ("allconv.py", [f"--config.seed={seed}", *ENS5, *extra]))
          for name, (extra, seed) in ALLCONV.items()],
        ("vote", "vote_ac10", (list(ALLCONV), "mean_softmax")),
        *[("train", name, ("four_conv_elastic.py",
                           [f"--config.seed={100 * (i + 2)}", *ENS5, *extra]))
          for i, (name, extra) in enumerate(PREPROCESSINGS.items())],
        ("vote", "vote_p2", (PRE_RUNS[:2], "mean_softmax")),
        ("vote", "vote_p4", (PRE_RUNS[:4], "mean_softmax")),
        ("vote", "vote_p7", (PRE_RUNS, "mean_softmax")),
        ("speedrun", "speedrun_seed1", (1, [])),
        ("speedrun", "speedrun_seed2", (2, [])),
    ],
    # The same steps on a few hundred images, to test this script on the CPU.
    "smoke": [
        ("train", "book_ensemble", ("ensemble.py:members=2",
                                    ["--config.num_epochs=2", "--config.train_size=256",
                                     "--config.plots=True"])),
        ("bench", "bench_f32", dict(batch_sizes="10,128", conv_impls="patches",
                                    dtypes="float32", bench_images=1280, limit=120)),
        ("train", "modern_1", ("modern.py:members=2,bn=1",
                               ["--config.num_epochs=3", "--config.augment_rotate=10.0",
                                "--config.augment_scale=0.1",
                                "--config.train_on_validation=True",
                                "--config.vote=mean_softmax", "--config.train_size=256"])),
        ("vote", "vote_both", (["book_ensemble", "modern_1"], "mean_softmax")),
        ("speedrun", "speedrun_seed0", (0, ["--config.train_size=256"])),
    ],
}


class Runner:
    def __init__(self, out, budget, data_dir, runs_dir):
        self.out, self.t0 = out, time.time()
        self.deadline = self.t0 + budget
        self.runs = runs_dir
        os.makedirs(out, exist_ok=True)
        os.makedirs(self.runs, exist_ok=True)
        self.log = open(os.path.join(out, "log.txt"), "a", buffering=1)
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

    def run(self, name, args, limit, watch=None):
        """Runs one stage with min(limit, time left - 10 s). watch(proc, started) is
        called every 2 s and may return a reason to stop. Returns the exit code, or None
        when the stage was skipped or stopped."""
        limit = min(limit, self.left() - 10)
        if limit < 20:
            self.say(f"skip {name}: {self.left():.0f} s left")
            return None
        started = time.time()
        proc = self.start(name, args)
        while proc.poll() is None:
            time.sleep(2)
            if time.time() - started > limit:
                self.stop(proc, f"{name} reached its {limit:.0f} s limit")
                return None
            reason = watch(proc, started) if watch else None
            if reason:
                self.stop(proc, reason)
                return None
        self.say(f"end {name}: exit {proc.returncode} after {time.time() - started:.1f} s")
        return proc.returncode


def stage_env(s, plan):
    code = ("import jax, jaxlib, flax, optax, orbax.checkpoint, ml_collections, sys; "
            "print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', "
            "jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); "
            "print('devices', jax.devices(), [d.device_kind for d in jax.devices()]); "
            "print('backend', jax.default_backend())")
    subprocess.run(["nvidia-smi", "-L"], stdout=s.log, stderr=subprocess.STDOUT, check=False) \
        if plan == "full" else None
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=s.env,
                          capture_output=True, text=True, timeout=120)
    s.say(proc.stdout.strip() + proc.stderr.strip()[-2000:])
    return proc.returncode == 0 and (plan != "full" or "backend gpu" in proc.stdout)


def stage_bench(s, name, b):
    s.run(name, [
        "run.py", "--mode=benchmark", "--config=experiments/dbl_conv_relu.py",
        f"--batch_sizes={b['batch_sizes']}", f"--conv_impls={b['conv_impls']}",
        f"--dtypes={b['dtypes']}", f"--bench_images={b['bench_images']}", "--repeats=3",
        f"--benchmark_out={os.path.join(s.out, name + '.json')}"], b["limit"])


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


def stage_speedrun(s, name, seed, extra):
    w = os.path.join(s.runs, name)
    t = time.time()
    code = s.run(name, ["run.py", "--config=experiments/speedrun.py", f"--workdir={w}",
                        "--overwrite", f"--config.seed={seed}", *extra], 90)
    s.say(f"{name}: exit {code}, end to end {time.time() - t:.1f} s")


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=570)
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--runs_dir", default="/tmp/gpu_plan_runs",
                    help="where runs (checkpoints included) are written; outside OUT so "
                         "a second call on the same machine finds them")
    ap.add_argument("--plan", choices=sorted(PLANS), default="full")
    ap.add_argument("--only", default="", help="comma-separated step names (default all)")
    a = ap.parse_args()
    steps = PLANS[a.plan]
    only = [n for n in a.only.split(",") if n]
    unknown = sorted(set(only) - {name for _, name, _ in steps})
    if unknown:
        ap.error(f"--only names steps not in plan {a.plan!r}: {', '.join(unknown)}")
    s = Runner(a.out, a.budget, a.data_dir, a.runs_dir)
    try:
        if not stage_env(s, a.plan):
            s.say("environment check failed: nothing else run")
            return 1
        for kind, name, arg in steps:
            if only and name not in only:
                continue
            if kind == "bench":
                stage_bench(s, name, arg)
            elif kind == "speedrun":
                stage_speedrun(s, name, *arg)
            elif kind == "vote":
                stage_vote(s, name, *arg)
            else:
                stage_train(s, name, *arg)
    finally:
        pack(s)
        s.say(f"done, {s.left():.0f} s of the budget left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
