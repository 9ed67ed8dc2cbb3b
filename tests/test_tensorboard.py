"""TensorBoard event files (metrics_io, read back with tensorboardX's protobuf
definitions) and the tqdm progress bar of mnist_cnn/driver.py."""

import io
import json
import math

import numpy as np
import pytest


@pytest.fixture
def train_synthetic(load_synthetic, read_scalars):
    """train_synthetic(workdir, config, **run_args) -> (metrics.jsonl's records, the
    TensorBoard scalars) of a driver run on the stored checkpoint's synthetic data."""
    from mnist_cnn import driver

    def train(workdir, config, **kwargs):
        load_synthetic()
        driver.run(config, str(workdir), log=lambda *a: None, **kwargs)
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(l) for l in lines], read_scalars(workdir / "tensorboard")
    return train


def cosine(lr, step, total):
    return lr * 0.5 * (1 + math.cos(math.pi * step / total))


def test_every_metric_of_an_ensemble_run_is_a_scalar_per_epoch(tmp_path, capsys,
                                                              train_synthetic,
                                                              fixture_config):
    """Two epochs of two stacked members with a cosine schedule: each number of
    metrics.jsonl at step `epoch` (float32), per-member lists under members/{i}/, and
    the learning rate of the epoch's last mini-batch. The progress bar, forced on,
    reaches the epoch's 16 mini-batches."""
    c = fixture_config(num_epochs=2, schedule="cosine", checkpoint_every_steps=0)
    metrics, scalars = train_synthetic(tmp_path, c, progress=True)
    per_run = ("train_loss", "train_nll", "epoch_train_s", "train_images_per_s",
               "validation_accuracy", "test_accuracy", "raw_validation_accuracy",
               "raw_test_accuracy")
    per_member = ("train_loss", "validation_accuracy", "test_accuracy")
    assert set(scalars) == {*per_run, "learning_rate",
                            *(f"members/{i}/{k}" for i in (0, 1) for k in per_member)}
    for m in metrics:
        e = m["epoch"]
        for k in per_run:
            assert scalars[k][e] == np.float32(m[k]), k
        for i in (0, 1):
            for k in per_member:
                assert scalars[f"members/{i}/{k}"][e] == np.float32(m[f"members_{k}"][i])
        assert scalars["learning_rate"][e] == pytest.approx(cosine(0.05, 16 * e - 1, 32),
                                                            rel=1e-6, abs=1e-9)
    assert sorted(scalars["learning_rate"]) == [1, 2]
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "16/16" in err


def test_vmapped_sweep_shows_each_runs_learning_rate(tmp_path, train_synthetic,
                                                     fixture_config):
    c = fixture_config(num_epochs=1, num_members=1, ema_decay=0.0)
    metrics, scalars = train_synthetic(tmp_path, c,
                                       hp={"learning_rate": [0.05, 0.2]}, seeds=[0, 1])
    assert scalars["members/0/learning_rate"] == {1: pytest.approx(0.05)}
    assert scalars["members/1/learning_rate"] == {1: pytest.approx(0.2)}
    assert "learning_rate" not in scalars
    assert scalars["members/1/test_accuracy"][1] == np.float32(
        metrics[0]["members_test_accuracy"][1])


def test_records_without_a_directory_write_nothing_and_rewrite_with_one(tmp_path, read_scalars):
    """A multi-process run's process > 0 records nothing; write_records (re)writes a
    directory's metrics.jsonl and tensorboard/ from a list of epochs."""
    from mnist_cnn import metrics_io
    with metrics_io.Recorder(None, [], lambda e: {}) as records:
        records.add({"epoch": 1, "train_loss": 1.0})
    assert metrics_io.tensorboard_scalars(
        {"epoch": 2, "train_loss": 0.5, "members_test_accuracy": [0.25, 0.75],
         "diverged": False, "name": "x"}) == {
        "train_loss": 0.5, "members/0/test_accuracy": 0.25, "members/1/test_accuracy": 0.75}
    epochs = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}]
    for _ in range(2):
        metrics_io.write_records(str(tmp_path), epochs, lambda e: {"learning_rate": 0.1 * e})
    assert [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] \
        == epochs
    assert read_scalars(tmp_path / "tensorboard") == {
        "train_loss": {1: 0.5, 2: 0.25},
        "learning_rate": {1: np.float32(0.1), 2: np.float32(0.2)}}


def test_progress_bar_names_the_epoch_and_reaches_the_total():
    from mnist_cnn import driver
    stream = io.StringIO()
    with driver.Progress(40, 10, 2, 3, enabled=True, done=8, stream=stream) as bar:
        for _ in range(4):
            bar.update(8)
    out = stream.getvalue()
    assert "epoch 2/3" in out and "40/40" in out and "images/s" in out
    assert out.endswith("\n")
    quiet = io.StringIO()   # not a terminal: off unless asked for
    with driver.Progress(40, 10, 1, 3, stream=quiet) as bar:
        bar.update(40)
    assert quiet.getvalue() == ""


def test_tensorboardx_is_imported_without_torch():
    """metrics_io.summary_writer_class leaves torch unimported (tensorboardX imports it
    when installed, which takes seconds) and leaves no placeholder behind: a later
    `import torch` works as before."""
    import subprocess
    import sys
    code = ("import sys; from mnist_cnn import metrics_io; "
            "w = metrics_io.summary_writer_class(); "
            "print(w.__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["SummaryWriter", "False"]
