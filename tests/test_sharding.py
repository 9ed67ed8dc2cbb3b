"""config.parallel=sharding (mnist_cnn/sharding.py): jit over a device mesh equals one
device, for data parallelism, micro-batches, batch norm, ensembles and vmapped sweeps;
checkpoints move between pmap, sharding and one device; two processes share one mesh.

Several CPU devices exist only if XLA_FLAGS is set before jax is imported, so each
check runs in a fresh process."""

import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow   # every test starts processes

@pytest.fixture
def prelude(device_prelude):
    """prelude(devices) -> conftest.py's DEVICE_PRELUDE for that many CPU devices with
    config.parallel "sharding", compiled at XLA's CPU optimisation level 0 (these tiny
    programs compile in a third less time)."""
    return lambda devices: device_prelude(devices, "sharding",
                                          "--xla_backend_optimization_level=0")


@pytest.fixture
def script(run_python, prelude):
    """script(body, devices=8) runs prelude + body in a fresh python with that many CPU
    devices; returns its stdout, failing on a non-zero exit."""
    return lambda body, devices=8: run_python(prelude(devices) + textwrap.dedent(body))


def test_one_network_on_8_devices_equals_one_device(script):
    """The same parameters, optimizer state and per-step losses after an epoch (float32
    tolerance) with shuffling, random shifts, momentum and dropout: the program is the
    one-device program, its mini-batch split over the devices (an all-reduce sums the
    gradient). Batch norm: moments over the whole mini-batch, as on one device.
    Micro-batches: 1 image a device a pass on 8 devices is one device's passes of 8."""
    script("""
        c = tiny_config(batch_size=16, shuffle=True, augment_shift=2, momentum=0.9)
        s, ref, ref_losses, got, losses = epoch(c, 1)
        assert s.count == 8 and s.kind == "sharding" and not s.spread_members, s
        assert "all-reduce" in last_program
        close(ref.params, got.params)
        close(ref.opt_state, got.opt_state)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        assert int(got.step) == 4 and losses.shape == (4,)

        bn = tiny_config(batch_size=16, shuffle=True)
        bn.layers[0].batch_norm = True
        _, ref, ref_losses, got, losses = epoch(bn, 1)
        close(ref.params, got.params)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)

        micro = tiny_config(batch_size=16, shuffle=True, micro_batch=1)
        whole = tiny_config(batch_size=16, shuffle=True, micro_batch=8)
        _, ref, ref_losses, got, losses = epoch(micro, 1, reference=whole)
        close(ref.params, got.params)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    """)


def test_members_and_sweep_points_spread_over_devices_equal_one_device(script):
    """M members over 8 devices use the largest divisor of M not above 8 (12 members:
    6 devices of 2, as parallel.setup picks for pmap), their axis split over the mesh; a vmapped sweep's points likewise,
    each with its own learning rate and dropout. Each equals its vmapped self."""
    script("""
        s, ref, ref_losses, got, losses = epoch(tiny_config(batch_size=8, shuffle=True), 12)
        assert s.spread_members and s.count == 6, s
        close(ref.params, got.params, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
        assert losses.shape == (12, 8)
        hp = {"learning_rate": [0.01, 0.02, 0.05, 0.1],
              "layers[1].dropout": [0.0, 0.1, 0.2, 0.3]}
        s, ref, ref_losses, got, losses = epoch(tiny_config(batch_size=8), 4, hp=hp)
        assert s.spread_members and s.count == 4, s
        close(ref.params, got.params, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
        assert parallel.setup(tiny_config(parallel="pmap"), 4, sweep=True) is None
    """)


def test_checkpoints_move_between_pmap_sharding_and_one_device(script, tmp_path):
    """A run stopped mid-epoch under pmap on 8 devices resumes under sharding, and one
    stopped under sharding resumes on one device: each ends with the uninterrupted
    one-device run's cost and parameters (checkpoints hold the one-device layout)."""
    out = script(f"""
        import json, signal
        from mnist_cnn import checkpoint, data, driver
        ds = synthetic_dataset()
        data.load = lambda *a, **k: ds
        agreed = driver.StopFlag.agreed

        def run(workdir, parallel, stop_at=None):
            c = tiny_config(train_size=64, batch_size=16, num_epochs=1, shuffle=True,
                            chunk_steps=1, plots=False, parallel=parallel)
            c.layers[1].dropout = 0.0   # pmap draws masks per device
            calls = iter(range(1, 99))
            driver.StopFlag.agreed = (agreed if stop_at is None else
                lambda self: signal.SIGTERM if next(calls) == stop_at else None)
            try:
                driver.run(c, workdir, log=print)
            except driver.Interrupted as e:
                return e
            model = networks.from_config(c)
            like = train.init_state(model, train.make_optimizer(c, 4), 0)
            state, _ = checkpoint.restore_latest(checkpoint.manager(workdir, 3), like)
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                return state.params, json.loads(f.readline())["train_loss"]

        want, want_loss = run("{tmp_path}/one", "none")
        for first, then in [("pmap", "sharding"), ("sharding", "none")]:
            w = "{tmp_path}/" + first
            stopped = run(w, first, stop_at=2)
            assert isinstance(stopped, driver.Interrupted) and stopped.step == 2, stopped
            got, loss = run(w, then)
            np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
            close(got, want, rtol=1e-4, atol=1e-5)
    """)
    assert out.count("resuming from the checkpoint at step 2 of 4 in epoch 1") == 2, out
    assert "8 x cpu (data parallel, pmap)" in out
    assert "8 x cpu (data parallel, sharding)" in out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESSES = """
import sys
pid, port = int(sys.argv[1]), int(sys.argv[2])
parallel.initialize_distributed(f"127.0.0.1:{port}", 2, pid, 60)
c = tiny_config(batch_size=16, shuffle=True, augment_shift=2)
s, ref, ref_losses, got, losses = epoch(c, 1)
assert s.count == 4 and jax.device_count() == 4, s
close(ref.params, got.params)
np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
s, ref, ref_losses, got, losses = epoch(tiny_config(batch_size=8, shuffle=True), 4)
assert s.count == 4 and s.local == 2 and s.spread_members, s
close(ref.params, got.params, rtol=1e-6, atol=1e-7)
np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
print("ok", pid)
"""


def test_two_processes_share_one_mesh(repo_root, prelude):
    """jax.distributed on this machine, 2 processes x 2 CPU devices: the mesh spans
    all 4 devices; one network data parallel and 4 members split one a device each
    equal one device, on both processes."""
    code = prelude(2) + TWO_PROCESSES
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), str(port)],
                              cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
    assert [o[0].split()[-2:] for o in outs] == [["ok", "0"], ["ok", "1"]]
