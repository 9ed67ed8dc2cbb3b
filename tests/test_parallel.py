"""Training across devices (mnist_cnn/parallel.py): pmap data parallelism equals one
device, ensembles spread over devices equal the vmapped ensemble, a run stopped on N
devices resumes on M, several processes equal one, device errors.

Several CPU devices exist only if XLA_FLAGS is set before jax is imported, so each
check runs in a fresh process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow   # every test starts processes

@pytest.fixture
def script(run_python, device_prelude):
    """script(body, devices=8) runs conftest.py's DEVICE_PRELUDE (config.parallel "pmap";
    auto may pick sharding: test_sharding.py) + body in a fresh python with that many CPU
    devices; returns its stdout, failing on a non-zero exit."""
    return lambda body, devices=8: run_python(device_prelude(devices, "pmap")
                                              + textwrap.dedent(body))


def test_pmap_on_8_devices_equals_one_device_after_an_epoch(script):
    """Same seed and global batch: the same parameters and per-step losses after an
    epoch (float32 tolerance), with shuffling and random shifts on."""
    out = script("""
        c = tiny_config(batch_size=16, shuffle=True, augment_shift=2, momentum=0.9)
        c.layers[1].dropout = 0.0
        s, ref, ref_losses, got, losses = epoch(c, 1)
        assert s.count == 8 and not s.spread_members, s
        close(ref.params, got.params)
        close(ref.opt_state, got.opt_state)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        assert int(got.step) == 4
        print("ok", float(np.abs(np.asarray(ref.params["layer0_conv"]["w"])).max()))
    """)
    assert out.startswith("ok")


def test_pmap_with_dropout_trains_and_keeps_replicas_identical(script):
    """With dropout each device draws its own masks (so the run differs from one
    device in the draw); the replicas must still hold identical parameters."""
    script("""
        c = tiny_config(batch_size=16)
        x, y = fake_data(64)
        model = networks.from_config(c)
        tx = train.make_optimizer(c, 4)
        st = train.init_states(model, tx, 0, 1)
        s = parallel.setup(c, 1)
        fn = parallel.make_chunk(s, model, tx, c, 4, 4, False, False)
        out, losses, _ = fn(parallel.place(s, st), parallel.place_data(s, x),
                            parallel.place_data(s, y), None, 0)
        w = np.asarray(out.params["layer1_fc"]["w"])
        assert w.shape[0] == 8 and all(np.array_equal(w[0], w[i]) for i in range(8))
        assert np.all(np.isfinite(np.asarray(losses)))
    """)


def test_pmap_batch_norm_equals_one_device_in_the_same_micro_batches(script):
    """With batch norm each device normalises by its own share's moments: 2 devices
    give what one device gives with the mini-batch in 2 micro-batches (the same
    slices, moments and mean gradient), through pmean in one case and a scan in the
    other."""
    script("""
        c = tiny_config(batch_size=16, shuffle=True, momentum=0.9)
        c.layers[0].batch_norm = True
        c.layers[1].dropout = 0.0
        c.micro_batch = 8
        s, ref, ref_losses, got, losses = epoch(c, 1)
        assert s.count == 2, s
        close(ref.params, got.params)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        whole = tiny_config(batch_size=16, shuffle=True, momentum=0.9)
        whole.layers[0].batch_norm, whole.layers[1].dropout = True, 0.0
        _, other, _, _, _ = epoch(whole, 1)
        assert not np.allclose(other.params["layer0_conv"]["w"], ref.params["layer0_conv"]["w"])
    """, devices=2)


@pytest.mark.parametrize("members,used", [(4, 4), (5, 5), (12, 6)])
def test_members_spread_over_devices_equal_the_vmapped_ensemble(members, used, script):
    """M members over 8 devices use the largest divisor of M not above 8 (5 members: 5
    devices, 12 members: 6 devices of 2); each member equals its vmapped self."""
    script(f"""
        c = tiny_config(batch_size=8, shuffle=True)
        s, ref, ref_losses, got, losses = epoch(c, {members})
        assert s.spread_members and s.count == {used}, s
        close(ref.params, got.params, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
        assert losses.shape == ({members}, 8)
    """)


# One epoch of the book's network on 640 real images, checkpointed every 4 of its 40
# mini-batches: the run every multi-device run below is compared with.
RUN_ARGS = ["--config=experiments/dbl_conv_relu.py", "--config.train_size=640",
            "--config.batch_size=16", "--config.num_epochs=1", "--config.shuffle=True",
            "--config.plots=False", "--config.checkpoint_every_steps=4",
            "--config.chunk_steps=4"]


def run_args(root, workdir, *extra):
    return [sys.executable, os.path.join(root, "run.py"), *RUN_ARGS, f"--workdir={workdir}",
            *extra]


def devices_env(devices):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _run_on(root, workdir, devices, *extra):
    return subprocess.run(run_args(root, workdir, *extra), capture_output=True, text=True,
                          env=devices_env(devices), cwd=root, timeout=300)


@pytest.fixture
def run_on(repo_root):
    """run_on(workdir, devices, *flags): run.py with RUN_ARGS on that many CPU devices."""
    return lambda *args: _run_on(repo_root, *args)


@pytest.fixture(scope="module")
def one_device(repo_root, tmp_path_factory):
    """The uninterrupted run on one device: its directory."""
    if not os.path.isdir(os.environ.get("MNIST_DATA_DIR", "")):
        pytest.skip("real MNIST not found: set MNIST_DATA_DIR")
    w = tmp_path_factory.mktemp("one_device") / "run"
    proc = _run_on(repo_root, w, 1)
    assert proc.returncode == 0, proc.stderr
    return w


def metrics(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir):
    """The parameters of the run's newest checkpoint, in the one-device layout."""
    import jax
    from experiments import dbl_conv_relu
    from mnist_cnn import checkpoint, networks, train
    c = dbl_conv_relu.get_config()
    model = networks.from_config(c)
    like = train.init_state(model, train.make_optimizer(c, 40), 0)
    state, _ = checkpoint.restore_latest(checkpoint.manager(str(workdir), 3), like)
    return jax.tree.leaves(state.params)


def stop_after_a_checkpoint(root, workdir, devices, *extra):
    """Starts the run on `devices`, sends SIGTERM once a mid-epoch checkpoint exists
    and waits for it to save and exit; returns the newest checkpoint's step."""
    proc = subprocess.Popen(run_args(root, workdir, *extra), cwd=root,
                            env=devices_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpts = workdir / "checkpoints"
    steps = lambda: sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) \
        if ckpts.is_dir() else []
    deadline = time.time() + 300
    while not steps() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert not (workdir / "summary.json").exists()
    return steps()[-1]


@pytest.mark.parametrize("first,then", [(8, 1), (1, 8)])
def test_a_run_stopped_on_n_devices_resumes_on_m_as_the_uninterrupted_run(
        first, then, tmp_path, repo_root, one_device, run_on):
    """Stopped mid-epoch on `first` devices (data parallel under pmap when 8), resumed
    on `then` (config.parallel=auto: parallel.AUTO on 8): it starts from that
    checkpoint (stored in the one-device layout) and ends with the uninterrupted
    one-device run's cost, accuracies and parameters, to float32 rounding (the devices
    sum the mini-batch's gradient in another order)."""
    w = tmp_path / "w"
    step = stop_after_a_checkpoint(repo_root, w, first,
                                   *(["--config.parallel=pmap"] if first == 8 else []))
    assert 0 < step < 40
    resumed = run_on(w, then)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from the checkpoint at step {step} of 40 in epoch 1" in resumed.stdout
    if then == 8:
        from mnist_cnn import parallel
        assert f"8 x cpu (data parallel, {parallel.AUTO})" in resumed.stdout
    assert json.loads((w / "summary.json").read_text())["devices"] == then
    (got,), (want,) = metrics(w), metrics(one_device)
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    for key in ("validation_accuracy", "test_accuracy"):
        assert abs(got[key] - want[key]) <= 0.002, key
    for a, b in zip(final_params(w), final_params(one_device)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra,fragment", [
    (["--config.num_devices=16"], "num_devices=16"),
    (["--config.batch_size=12"], "batch_size=12 does not split over 8 devices"),
    (["--config.parallel=none", "--config.num_devices=2"], "num_devices=2"),
    (["--config.parallel=spmd"], "parallel"),
    (["--config.num_devices=-1"], "num_devices"),
])
def test_device_requests_the_machine_cannot_meet(tmp_path, extra, fragment, run_on,
                                                assert_user_error):
    proc = run_on(tmp_path / "w", 8, *extra)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_and_only_process_0_writes(tmp_path, repo_root,
                                                                   one_device):
    """jax.distributed on this machine: 2 processes x 2 CPU devices (gloo collectives,
    loopback), pmap, bounded by a timeout; the same epoch as one process on one device
    (sharding: test_sharding.py)."""
    port = _free_port()
    procs = [subprocess.Popen(run_args(repo_root, tmp_path / f"w{i}",
                                       "--config.parallel=pmap",
                                       f"--coordinator_address=127.0.0.1:{port}",
                                       "--num_processes=2", "--distributed_timeout=60",
                                       f"--process_id={i}"),
                              cwd=repo_root, env=devices_env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "4 x cpu in 2 processes" in outs[0][0]
    assert not (tmp_path / "w1").exists()       # process 1 writes nothing
    (m2,), (m1,) = metrics(tmp_path / "w0"), metrics(one_device)
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-5)
    assert abs(m2["test_accuracy"] - m1["test_accuracy"]) <= 0.002


@pytest.mark.parametrize("args,fragment", [
    (["--num_processes=2"], "--coordinator_address"),
    (["--num_processes=2", "--coordinator_address=127.0.0.1:1", "--process_id=2"],
     "--process_id"),
    (["--num_processes=0"], "--num_processes"),
])
def test_bad_multi_process_flags(tmp_path, args, fragment, run_on, assert_user_error):
    proc = run_on(tmp_path / "w", 1, *args)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def test_a_coordinator_that_never_answers_times_out_with_one_line(tmp_path, run_on,
                                                                 assert_user_error):
    proc = run_on(tmp_path / "w", 1, "--num_processes=2", "--process_id=1",
                   f"--coordinator_address=127.0.0.1:{_free_port()}",
                   "--distributed_timeout=3")
    assert_user_error(proc, "did not gather all 2 processes within 3 s")
    assert not (tmp_path / "w").exists()
