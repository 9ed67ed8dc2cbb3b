"""Every GPU measurement of a session, in one script with one deadline.

A lent GPU machine comes with a small, fixed budget of device time, so the measurements
are prepared here, tested on the CPU with --plan=smoke, and run once on the GPU:

    python benchmarks/gpu_session.py --out=OUT --budget=570 [--data_dir=DIR]

Stages, in order, each a subprocess of run.py with its own time limit inside the budget:

1. env: device, driver and package versions (the run stops here if jax sees no GPU
   under --plan=full);
2. bench: `run.py --mode=benchmark` for dbl_conv_relu over mini-batch 10/128/1024,
   conv patches/xla, float32 (and bfloat16 for xla), Markdown + JSON;
3. speedrun: experiments/speedrun.py with three seeds, end-to-end wall time each;
4. train: whole runs in order (the plan's `train` list: the book's five-network
   ensemble at mini-batch 10, longer `modern` ensembles, expanded-data rows), each
   stopped early, and reported as not measured, when its finished epochs project its
   end past the deadline.

What comes back in OUT: log.txt (everything every stage printed), bench*.json, and
runs.tar.gz (each run's config.json, metrics.jsonl, summary.json and figures).
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

PLANS = {
    "full": dict(
        bench=[dict(batch_sizes="10,128,1024", conv_impls="xla,patches", dtypes="float32",
                    bench_images=30720, out="bench_f32.json", limit=110),
               dict(batch_sizes="128,1024", conv_impls="xla", dtypes="bfloat16",
                    bench_images=30720, out="bench_bf16.json", limit=45)],
        speedrun_seeds=(0, 1, 2),
        # (run name, experiment, extra flags), in order; each stopped early when its
        # first epochs project past the deadline. The third session (H200) measured
        # double_fc_dropout, expanded_data n=100 and the 80-epoch modern ensembles; CPU
        # sessions measured expanded_data n=300 and the batch-norm single networks.
        # What is left: the book's ensemble, the batch-norm ensemble (issue 4's 99.75%),
        # the remaining expanded-data rows (see the README's results table).
        train=[("book_ensemble", "ensemble.py", []),
               ("modern_bn_ens5", "modern.py:members=5,bn=1,rot=10,zoom=0.1,epochs=40", []),
               ("expanded_1000", "expanded_data.py:n=1000", []),
               ("x2fc_1000", "expanded_data_double_fc.py:n=1000", [])],
        overrides=[]),
    # The same stages on a few hundred images, to test this script on the CPU.
    "smoke": dict(
        bench=[dict(batch_sizes="10,128", conv_impls="patches", dtypes="float32",
                    bench_images=1280, out="bench_f32.json", limit=120)],
        speedrun_seeds=(0,),
        train=[("book_ensemble", "ensemble.py:members=2", ["--config.num_epochs=2"]),
               ("modern_1", "modern.py:members=2,epochs=3,rot=10,zoom=0.1,bn=1", [])],
        overrides=["--config.train_size=256", "--config.plots=True"]),
}


class Session:
    def __init__(self, out, budget, data_dir):
        self.out, self.t0 = out, time.time()
        self.deadline = self.t0 + budget
        self.runs = os.path.join(out, "work")
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


def stage_bench(s, p):
    for b in p["bench"]:
        s.run(f"bench {b['out']}", [
            "run.py", "--mode=benchmark", "--config=experiments/dbl_conv_relu.py",
            f"--batch_sizes={b['batch_sizes']}", f"--conv_impls={b['conv_impls']}",
            f"--dtypes={b['dtypes']}", f"--bench_images={b['bench_images']}", "--repeats=3",
            f"--benchmark_out={os.path.join(s.out, b['out'])}"], b["limit"])


def stage_speedrun(s, p):
    for seed in p["speedrun_seeds"]:
        w = os.path.join(s.runs, f"speedrun_seed{seed}")
        t = time.time()
        code = s.run(f"speedrun seed {seed}", [
            "run.py", "--config=experiments/speedrun.py", f"--workdir={w}", "--overwrite",
            f"--config.seed={seed}", *p["overrides"]], 90)
        s.say(f"speedrun seed {seed}: exit {code}, end to end {time.time() - t:.1f} s")


def epochs_done(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def pace_watch(s, workdir, epochs, margin):
    """Stops a run whose finished epochs project its end past the deadline: the wall
    time between epochs once two are done, before that the first epoch's training time
    plus 15% for evaluation and the checkpoint."""
    seen = []   # (epochs done, time first seen)

    def watch(proc, started):
        done = epochs_done(workdir)
        if not done:
            return None
        if not seen or seen[-1][0] != len(done):
            seen.append((len(done), time.time()))
        if len(seen) >= 2:
            per_epoch = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
        else:
            per_epoch = 1.15 * done[-1]["epoch_train_s"]
        projected = (epochs - len(done)) * per_epoch
        if projected > s.left() - margin:
            return (f"{len(done)}/{epochs} epochs done, {per_epoch:.1f} s an epoch: "
                    f"{projected:.0f} s more would pass the deadline")
        return None
    return watch


def stage_train(s, name, exp, extra, overrides, epochs, margin=15):
    w = os.path.join(s.runs, name)
    watch = pace_watch(s, w, epochs, margin)
    return s.run(name, ["run.py", f"--config=experiments/{exp}", f"--workdir={w}",
                        "--overwrite", *overrides, *extra], 100_000, watch)


def num_epochs(exp, extra):
    """The run's epoch count, from the experiment's config as run.py would build it."""
    import importlib
    sys.path.insert(0, ROOT)
    for e in extra:
        if e.startswith("--config.num_epochs="):
            return int(e.split("=")[1])
    path, _, arg = exp.partition(":")
    module = importlib.import_module("experiments." + path.removesuffix(".py"))
    return (module.get_config(arg) if arg else module.get_config()).num_epochs


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
    ap.add_argument("--plan", choices=sorted(PLANS), default="full")
    a = ap.parse_args()
    p = PLANS[a.plan]
    s = Session(a.out, a.budget, a.data_dir)
    try:
        if not stage_env(s, a.plan):
            s.say("environment check failed: nothing else run")
            return 1
        stage_bench(s, p)
        stage_speedrun(s, p)
        for name, exp, extra in p["train"]:
            stage_train(s, name, exp, extra, p["overrides"], num_epochs(exp, extra))
    finally:
        pack(s)
        s.say(f"done, {s.left():.0f} s of the budget left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
