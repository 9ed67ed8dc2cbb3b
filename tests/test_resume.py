"""Runs that survive: SIGKILL at any moment + resume == uninterrupted, SIGTERM saves,
one process per run directory, config changes refused, divergence stops the run."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


ARGS = ["--config=experiments/dbl_conv_relu.py", "--config.train_size=400",
        "--config.num_epochs=3", "--config.shuffle=True", "--config.layers[2].dropout=0.3",
        "--config.checkpoint_every_steps=8", "--config.chunk_steps=8",
        "--config.keep_checkpoints=2"]
TIMING = {"epoch_train_s", "train_images_per_s", "wall_time_s", "compile_time_s",
          "phase_time_s"}


def start(workdir):
    """run.py with ARGS in the background."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen([sys.executable, os.path.join(root, "run.py"), *ARGS,
                             f"--workdir={workdir}"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def checkpoint_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for_checkpoint_past(proc, workdir, step, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        steps = checkpoint_steps(workdir)
        if steps and steps[-1] >= step:
            return steps[-1]
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared in time")


def results(workdir):
    summary = json.loads(open(os.path.join(workdir, "summary.json")).read())
    metrics = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING}
    return strip(summary), [strip(m) for m in metrics]


def final_params(workdir):
    from mnist_cnn import checkpoint
    from mnist_cnn import networks, train
    from experiments import dbl_conv_relu
    c = dbl_conv_relu.get_config()
    model = networks.from_config(c)
    tx = train.make_optimizer(c, 40)
    like = train.init_state(model, tx, 0)
    state, meta = checkpoint.restore_latest(checkpoint.manager(workdir, 2), like)
    return state, meta


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_py):
    """The uninterrupted run every interrupted one must equal, bit for bit."""
    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("real MNIST not found: set MNIST_DATA_DIR")
    w = tmp_path_factory.mktemp("reference")
    proc = run_py(*ARGS, f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr
    return w


def assert_same_run(a, b):
    assert results(a) == results(b)
    sa, ma = final_params(a)
    sb, mb = final_params(b)
    assert int(sa.step) == int(sb.step) == 120
    import jax
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_same_seed_gives_bit_identical_runs(reference, tmp_path, run_py):
    proc = run_py(*ARGS, f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(reference, tmp_path)


def test_sigkill_at_several_moments_then_resume_is_exact(reference, tmp_path, run_py):
    # Kill inside epoch 1 (step 16 of 40), then inside epoch 3, then finish.
    for past in (16, 96):
        proc = start(tmp_path)
        wait_for_checkpoint_past(proc, tmp_path, past)
        proc.kill()
        proc.wait()
        assert not os.path.exists(tmp_path / "summary.json")
    proc = run_py(*ARGS, f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from the checkpoint" in proc.stdout
    assert_same_run(reference, tmp_path)
    assert len(checkpoint_steps(tmp_path)) <= 2   # keep_checkpoints


def test_sigterm_and_sigint_save_and_exit_cleanly(reference, tmp_path, run_py):
    """SIGTERM in epoch 1, then SIGINT in epoch 2 of the resumed run: each saves a
    checkpoint and exits with 128 + the signal and one line; the third start finishes
    the run as if it had never stopped."""
    for sig, past in ((signal.SIGTERM, 8), (signal.SIGINT, 48)):
        proc = start(tmp_path)
        wait_for_checkpoint_past(proc, tmp_path, past)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err
        assert "Traceback" not in err and "re-run the same command to resume" in err
        assert not os.path.exists(tmp_path / "summary.json")
    proc = run_py(*ARGS, f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(reference, tmp_path)


def test_finished_run_is_not_trained_again(reference, run_py):
    before = open(os.path.join(reference, "summary.json")).read()
    proc = run_py(*ARGS, f"--workdir={reference}")
    assert proc.returncode == 0 and "finished run" in proc.stdout
    assert open(os.path.join(reference, "summary.json")).read() == before


def test_different_config_refuses_naming_fields(reference, run_py, assert_user_error):
    before = sorted(os.listdir(reference))
    proc = run_py(*ARGS, "--config.learning_rate=0.05", "--config.seed=3",
                  f"--workdir={reference}")
    assert_user_error(proc, "different config", "learning_rate: 0.03 -> 0.05", "seed: 0 -> 3",
                      "--overwrite")
    assert sorted(os.listdir(reference)) == before


def test_second_process_on_a_run_directory_refuses(tmp_path, mnist_dir, run_py,
                                                   assert_user_error):
    (tmp_path / ".lock").touch()
    with open(tmp_path / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_py(*ARGS, f"--workdir={tmp_path}")
    assert_user_error(proc, "another process")
    assert not (tmp_path / "config.json").exists()


def test_divergence_stops_with_epoch_and_step(tmp_path, mnist_dir, run_py, assert_user_error):
    proc = run_py("--config=experiments/dbl_conv_relu.py", "--config.train_size=200",
                  "--config.learning_rate=1e6", "--config.num_epochs=2",
                  f"--workdir={tmp_path}")
    assert_user_error(proc, "diverged", "epoch 1", "step", "smaller --config.learning_rate")
    assert (tmp_path / "config.json").exists()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert not (tmp_path / "summary.json").exists()


def test_killed_between_last_checkpoint_and_summary(reference, tmp_path, run_py):
    """A run killed after its last epoch's checkpoint, before summary.json: the re-run
    trains nothing more and writes the same summary and figures."""
    import shutil
    w = tmp_path / "w"
    shutil.copytree(reference, w)
    for f in ("summary.json", "errors.png", "learning_curves.png"):
        (w / f).unlink()
    proc = run_py(*ARGS, f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from the checkpoint at the end of epoch 3" in proc.stdout
    assert not [l for l in proc.stdout.splitlines() if l.startswith("epoch ")]
    assert results(w) == results(reference)
    assert (w / "errors.png").exists()


def test_run_saved_before_a_field_existed_resumes_with_that_field_at_its_default(tmp_path):
    """A config.json written before a field was added (here width_norm, eval_every and a
    layer's batch_norm) matches today's config when today's value is the default (the
    behaviour before the field existed), and differs, naming the field, otherwise."""
    from experiments import dbl_conv_relu
    from mnist_cnn import driver
    new = json.loads(dbl_conv_relu.get_config().to_json())
    old = json.loads(json.dumps(new))
    del old["width_norm"], old["eval_every"], old["layers"][0]["batch_norm"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "metrics.jsonl").write_text("")
    assert driver.config_diff(old, new) == []
    assert driver.inspect_workdir(str(tmp_path), new, overwrite=False) == "resume"
    changed = json.loads(json.dumps(new))
    changed["width_norm"], changed["layers"][0]["batch_norm"] = 14, True
    assert driver.config_diff(old, changed) == [
        "layers[0].batch_norm: False -> True", "width_norm: 0 -> 14"]
    with pytest.raises(driver.RunError, match="width_norm: 0 -> 14"):
        driver.inspect_workdir(str(tmp_path), changed, overwrite=False)


# ---- a checkpoint in the stored format (tests/data/mid_epoch_checkpoint) ----

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "mid_epoch_checkpoint")


def flat_state(workdir, config):
    """{path: array} of the newest checkpoint's state, as finished/state.npz stores it."""
    import flax
    from mnist_cnn import checkpoint, networks, train
    model = networks.from_config(config)
    like = train.with_ema(train.init_states(model, train.make_optimizer(config, 16),
                                            config.seed, 2), config.ema_decay)
    state, meta = checkpoint.restore_latest(checkpoint.manager(str(workdir), 1), like)
    flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(state), sep="/")
    return {k: np.asarray(v) for k, v in flat.items() if v is not None}, meta


@pytest.fixture(scope="module")
def resumed_fixture(tmp_path_factory, synthetic_dataset, fixture_config):
    """The stored run directory (checkpointed at step 8 of 16 in epoch 2) resumed to
    the end with today's driver: (directory, log lines)."""
    import shutil
    from mnist_cnn import data, driver
    w = tmp_path_factory.mktemp("fixture") / "run"
    shutil.copytree(os.path.join(FIXTURE, "run"), w)
    stale = w / "tensorboard"   # what a killed process may leave: superseded on resume
    stale.mkdir()
    (stale / "events.out.tfevents.0.stale").write_bytes(b"")
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "load", lambda *a, **k: synthetic_dataset())
        driver.run(fixture_config(), str(w), log=lines.append)
    return w, lines


def test_stored_checkpoint_record_reads_and_writes_unchanged():
    """driver.RunPosition reads the checkpoint's JSON record and writes it back with the
    same keys, order and values."""
    from mnist_cnn import driver
    path = os.path.join(FIXTURE, "run", "checkpoints", "24", "meta", "metadata")
    with open(path) as f:
        record = json.load(f)
    pos = driver.RunPosition.from_dict(record)
    assert (pos.epoch, pos.step_in_epoch, len(pos.metrics)) == (1, 8, 1)
    assert json.dumps(pos.to_dict()) == json.dumps(record)
    without = {k: v for k, v in record.items() if k != "member_loss_sums"}
    assert driver.RunPosition.from_dict(without).member_loss_sums is None


def test_stored_checkpoint_resumes_where_it_stopped(resumed_fixture, fixture_config,
                                                   read_scalars):
    w, lines = resumed_fixture
    assert "resuming from the checkpoint at step 8 of 16 in epoch 2" in lines
    assert [l.split(":")[0] for l in lines if l.startswith("epoch ")] == ["epoch 2", "epoch 3"]
    metrics = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
    with open(os.path.join(FIXTURE, "run", "metrics.jsonl")) as f:
        assert metrics[0] == json.loads(f.readline())   # epoch 1, from the checkpoint
    _, meta = flat_state(w, fixture_config())
    with open(os.path.join(FIXTURE, "run", "checkpoints", "24", "meta", "metadata")) as f:
        assert list(meta) == list(json.load(f))   # the record written keeps its format
    assert (meta["epoch"], meta["step_in_epoch"], len(meta["metrics"])) == (3, 0, 3)
    assert not (w / "tensorboard" / "events.out.tfevents.0.stale").exists()
    scalars = read_scalars(w / "tensorboard")   # fails on a (tag, step) written twice
    assert scalars["train_loss"] == {m["epoch"]: np.float32(m["train_loss"]) for m in metrics}


def same_vector_instructions(written: dict) -> bool:
    """Whether this CPU has the widest vector instructions of the one that wrote the
    fixture (finished/machine.json): XLA's CPU kernels sum in another order with
    AVX-512 than with AVX2, which changes float32 results in the last bits."""
    from mnist_cnn import bench
    return ("avx512f" in (bench.cpuinfo("flags") or "").split()) == written["avx512f"]


def assert_same_values(got, want, exact: bool):
    """got == want bit for bit (exact), or up to float32 rounding: numbers within a
    relative 1e-5, everything else equal."""
    if exact or not isinstance(want, (float, list, dict)):
        assert got == want
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same_values(a, b, exact)
    else:
        assert sorted(got) == sorted(want)
        for k in want:
            assert_same_values(got[k], want[k], exact)


def test_stored_checkpoint_resumes_bit_exact(resumed_fixture, fixture_config):
    """Resumed, the run ends with the parameters, metrics and summary of the same run
    uninterrupted (finished/, written with the checkpoint): bit for bit on a machine that
    computes as the one that wrote it, up to float32 rounding on a CPU with other vector
    instructions; skipped under another jax version or backend."""
    import jax
    w, _ = resumed_fixture
    finished = os.path.join(FIXTURE, "finished")
    with open(os.path.join(finished, "summary.json")) as f:
        want = json.load(f)
    if (jax.__version__, jax.default_backend()) != (want["jax_version"], want["platform"]):
        pytest.skip(f"the fixture was computed with jax {want['jax_version']} on "
                    f"{want['platform']}")
    with open(os.path.join(finished, "machine.json")) as f:
        exact = want["platform"] != "cpu" or same_vector_instructions(json.load(f))
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING}
    assert_same_values(strip(json.loads((w / "summary.json").read_text())), strip(want),
                       exact)
    with open(os.path.join(finished, "metrics.jsonl")) as f:
        want_metrics = [strip(json.loads(l)) for l in f]
    got_metrics = [strip(json.loads(l)) for l in (w / "metrics.jsonl").read_text().splitlines()]
    assert_same_values(got_metrics, want_metrics, exact)
    state, _ = flat_state(w, fixture_config())
    reference = np.load(os.path.join(finished, "state.npz"))
    assert sorted(state) == sorted(reference.files)
    for k in reference.files:
        if exact:
            np.testing.assert_array_equal(state[k], reference[k], err_msg=k)
        else:
            np.testing.assert_allclose(state[k], reference[k], rtol=1e-5, atol=1e-6,
                                       err_msg=k)
