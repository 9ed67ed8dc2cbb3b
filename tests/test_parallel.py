"""Training across devices (mnist_cnn/parallel.py): pmap data parallelism equals one
device, ensembles spread over devices equal the vmapped ensemble, device errors.

Several CPU devices exist only if XLA_FLAGS is set before jax is imported, so each
check runs in a fresh subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.test_run import ROOT, assert_user_error

PRELUDE = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np
from mnist_cnn import networks, parallel, train
from tests.test_train import fake_data, tiny_config

def close(a, b, rtol=2e-5, atol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)

def epoch(c, members, n=64):
    x, y = fake_data(n)
    nb = train.steps_per_epoch(n, c.batch_size)
    model = networks.from_config(c)
    tx = train.make_optimizer(c, nb)
    st = train.init_states(model, tx, c.seed, members)
    order = train.epoch_order(st.key, 0, n, members > 1) if c.shuffle else None
    one = train.make_train_chunk(model, tx, c, nb, stacked=members > 1)
    ref, ref_losses, _ = one(jax.tree.map(jnp.copy, st), x, y, order, 0, num_steps=nb)
    s = parallel.setup(c, members)
    fn = parallel.make_chunk(s, model, tx, c, nb, nb, members > 1, order is not None)
    out, losses, _ = fn(parallel.place(s, st), parallel.place_data(s, x),
                        parallel.place_data(s, y), parallel.place_order(s, order), 0)
    return s, ref, ref_losses, parallel.host(s, out), parallel.losses_to_host(s, losses)
"""


def script(body, devices=8):
    code = PRELUDE.format(devices=devices, root=ROOT) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_pmap_on_8_devices_equals_one_device_after_an_epoch():
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


def test_pmap_with_dropout_trains_and_keeps_replicas_identical():
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


def test_pmap_batch_norm_equals_one_device_in_the_same_micro_batches():
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
def test_members_spread_over_devices_equal_the_vmapped_ensemble(members, used):
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


def _run_py(workdir, devices, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"),
         "--config=experiments/dbl_conv_relu.py", f"--workdir={workdir}",
         "--config.train_size=640", "--config.batch_size=16", "--config.num_epochs=1",
         "--config.shuffle=True", "--config.plots=False", *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_run_py_on_8_devices_matches_1_device_and_resumes_across_counts(tmp_path, mnist_dir):
    one = _run_py(tmp_path / "one", 1)
    eight = _run_py(tmp_path / "eight", 8)
    assert one.returncode == 0 and eight.returncode == 0, (one.stderr, eight.stderr)
    assert "8 x cpu (data parallel, pmap)" in eight.stdout
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    m8 = json.loads((tmp_path / "eight" / "metrics.jsonl").read_text().splitlines()[0])
    assert m8["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-5)
    assert abs(m8["test_accuracy"] - m1["test_accuracy"]) <= 0.002
    assert json.loads((tmp_path / "eight" / "summary.json").read_text())["devices"] == 8
    # The checkpoint is in the one-device layout: the 8-device run's directory resumes
    # on 1 device (here: a finished run is recognised, the config diff ignores devices).
    again = _run_py(tmp_path / "eight", 1, "--config.parallel=none")
    assert again.returncode == 0 and "finished run" in again.stdout, again.stderr


@pytest.mark.parametrize("extra,fragment", [
    (["--config.num_devices=16"], "num_devices=16"),
    (["--config.batch_size=12"], "batch_size=12 does not split over 8 devices"),
    (["--config.parallel=none", "--config.num_devices=2"], "num_devices=2"),
    (["--config.parallel=spmd"], "parallel"),
    (["--config.num_devices=-1"], "num_devices"),
])
def test_device_requests_the_machine_cannot_meet(tmp_path, extra, fragment):
    proc = _run_py(tmp_path / "w", 8, *extra)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_and_only_process_0_writes(tmp_path, mnist_dir):
    """jax.distributed on this machine: 2 processes x 2 CPU devices (gloo collectives,
    loopback), bounded by a timeout; the same epoch as one process on one device."""
    port = _free_port()
    common = [sys.executable, os.path.join(ROOT, "run.py"),
              "--config=experiments/dbl_conv_relu.py", "--config.train_size=640",
              "--config.batch_size=16", "--config.num_epochs=1", "--config.shuffle=True",
              "--config.plots=False", f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2", "--distributed_timeout=60"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(common + [f"--process_id={i}",
                                        f"--workdir={tmp_path / f'w{i}'}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "4 x cpu in 2 processes" in outs[0][0]
    assert not (tmp_path / "w1").exists()       # process 1 writes nothing
    one = _run_py(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr
    m2 = json.loads((tmp_path / "w0" / "metrics.jsonl").read_text())
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text())
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-5)
    assert abs(m2["test_accuracy"] - m1["test_accuracy"]) <= 0.002


@pytest.mark.parametrize("args,fragment", [
    (["--num_processes=2"], "--coordinator_address"),
    (["--num_processes=2", "--coordinator_address=127.0.0.1:1", "--process_id=2"],
     "--process_id"),
    (["--num_processes=0"], "--num_processes"),
])
def test_bad_multi_process_flags(tmp_path, args, fragment):
    proc = _run_py(tmp_path / "w", 1, *args)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def test_a_coordinator_that_never_answers_times_out_with_one_line(tmp_path):
    proc = _run_py(tmp_path / "w", 1, "--num_processes=2", "--process_id=1",
                   f"--coordinator_address=127.0.0.1:{_free_port()}",
                   "--distributed_timeout=3")
    assert_user_error(proc, "did not gather all 2 processes within 3 s")
    assert not (tmp_path / "w").exists()
