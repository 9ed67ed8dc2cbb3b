"""End to end through run.py in a subprocess, as a user runs it: results and bad input."""

import json
import os
import shutil

import pytest


def test_list_shows_experiments_with_book_and_measured_numbers(run_py):
    """Every experiment and committee file is listed, with the book's figure where it
    has one and the measured one from results/results.csv."""
    from mnist_cnn import report
    proc = run_py("--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, book, ours in [("shallow", "97.80%", "97.80%"), ("basic_conv", "98.78%", "98.70%"),
                             ("dbl_conv", "99.06%", "98.90%"),
                             ("dbl_conv_relu", "99.23%", "98.97%"),
                             ("expanded_data:n=300", "99.46%", "99.42%"),
                             ("intro_conv", "-", "97.74%"), ("allconv", "-", "99.73%"),
                             ("committees/four_conv_and_allconv", "-", "99.75%")]:
        line = next(l for l in lines if l.startswith(name + " "))
        assert line.split()[1:3] == [book, ours], line
    for name in report.experiment_files():
        assert any(l.startswith(name + " ") or l.startswith(name + ":") for l in lines), name
    assert {l.split()[0] for l in lines if "not yet measured" in l} == \
        report.not_yet_measured(report.experiment_files())


def test_small_run_writes_every_run_file(tmp_path, mnist_dir, run_py):
    workdir = tmp_path / "run"
    proc = run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={workdir}",
                  "--config.num_epochs=2", "--config.train_size=500", "--config.shuffle=True")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and summary["epochs_run"] == 2
    for key in ("test_accuracy", "best_validation_accuracy", "best_epoch", "epochs_run",
                "wall_time_s", "train_images_per_s"):
        assert key in summary
    best = max(range(2), key=lambda i: (metrics[i]["validation_accuracy"], i))
    assert summary["test_accuracy"] == metrics[best]["test_accuracy"]
    assert summary["best_epoch"] == best + 1
    assert summary["train_images"] == 2 * 500
    config = json.loads((workdir / "config.json").read_text())
    assert config["train_size"] == 500 and config["shuffle"] is True
    for fig in ("learning_curves.png", "errors.png", "filters.png"):
        assert (workdir / fig).stat().st_size > 1000


def test_one_epoch_dbl_conv_relu_on_full_mnist(tmp_path, mnist_dir, run_py):
    """The book's ReLU network after one epoch of 50,000 images (measured: 96.95% test,
    97.23% validation). Below 96.5% means the network, data or SGD changed."""
    proc = run_py("--config=experiments/dbl_conv_relu.py", f"--workdir={tmp_path / 'r'}",
                  "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.965, summary
    assert summary["best_validation_accuracy"] >= 0.965, summary


# ---- bad input: one line, non-zero exit, no traceback, run directory untouched ----

def test_unknown_experiment(tmp_path, run_py, assert_user_error):
    assert_user_error(run_py("--config=experiments/no_such.py", f"--workdir={tmp_path}/w"),
                      "no_such")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override,fragment", [
    ("--config.learning_rate=abc", "learning_rate"),
    ("--config.no_such_field=1", "no_such_field"),
    ("--config.learning_rate=0", "learning_rate"),
    ("--config.learning_rate=-0.1", "learning_rate"),
    ("--config.batch_size=0", "batch_size"),
    ("--config.num_epochs=-1", "num_epochs"),
    ("--config.train_size=60000", "train_size"),
    ("--config.conv_impl=fft", "conv_impl"),
    ("--config.layers[0].pool=median", "pool"),
    ("--config.layers[0].kernel=40", "layers"),
    ("--config.layers[2].dropout=1.5", "dropout"),
])
def test_bad_config_values(tmp_path, override, fragment, run_py, assert_user_error):
    assert_user_error(run_py("--config=experiments/dbl_conv_relu.py",
                             f"--workdir={tmp_path}/w", override), fragment)
    assert not (tmp_path / "w").exists()


def test_missing_workdir_and_config(tmp_path, run_py, assert_user_error):
    assert_user_error(run_py("--config=experiments/shallow.py"), "--workdir")
    assert_user_error(run_py(f"--workdir={tmp_path}/w"), "--config")


def test_missing_data_says_where_it_looked(tmp_path, run_py, assert_user_error, quick):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"MNIST_DATA_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    proc = run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                  "--config.download=False", *quick, env=env)
    assert_user_error(proc, "not found", "MNIST_DATA_DIR")
    assert not (tmp_path / "w").exists()
    proc = run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                  "--config.data_source=idx", f"--config.data_dir={empty}", *quick, env=env)
    assert_user_error(proc, "missing")


def _copy_mnist(src, dst):
    shutil.copytree(src, dst)
    for f in os.listdir(dst):
        os.chmod(os.path.join(dst, f), 0o644)
    return dst


@pytest.mark.parametrize("damage,fragment", [
    ("truncate", ""), ("magic", "magic"), ("checksum", "SHA-256")])
def test_corrupt_data_files(tmp_path, mnist_dir, damage, fragment, run_py, assert_user_error,
                            quick):
    d = _copy_mnist(mnist_dir, tmp_path / "mnist")
    labels = d / "t10k-labels-idx1-ubyte.gz"
    import gzip
    raw = gzip.decompress(labels.read_bytes())
    if damage == "truncate":
        raw = raw[:-100]
    elif damage == "magic":
        raw = b"\x00\x00\x09\x01" + raw[4:]
    else:
        raw = raw[:-1] + bytes([(raw[-1] + 1) % 10])
    if damage != "checksum":   # without SHA256SUMS the parser itself must catch it
        (d / "SHA256SUMS").unlink()
    labels.write_bytes(gzip.compress(raw))
    proc = run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                  f"--config.data_dir={d}", *quick)
    assert_user_error(proc, "t10k-labels", fragment)
    assert not (tmp_path / "w").exists()


def test_existing_run_directory_is_left_untouched(tmp_path, mnist_dir, run_py,
                                                  assert_user_error, quick):
    w = tmp_path / "w"
    w.mkdir()
    (w / "summary.json").write_text('{"test_accuracy": 0.99}')
    before = sorted(os.listdir(w))
    assert_user_error(run_py("--config=experiments/shallow.py", f"--workdir={w}", *quick),
                      "--overwrite")
    assert sorted(os.listdir(w)) == before
    assert (w / "summary.json").read_text() == '{"test_accuracy": 0.99}'
    # A bad config never reaches the run directory either, even with --overwrite.
    assert_user_error(run_py("--config=experiments/shallow.py", f"--workdir={w}", "--overwrite",
                             "--config.batch_size=0"), "batch_size")
    assert (w / "summary.json").read_text() == '{"test_accuracy": 0.99}'


def test_malformed_flag_syntax(tmp_path, run_py, assert_user_error):
    assert_user_error(run_py("--config=experiments/shallow.py", f"--workdir={tmp_path}/w",
                             "--config.learning_rate"), "learning_rate")
    assert_user_error(run_py("--no_such_flag=1"), "no_such_flag")


def test_expanded_data_with_augmentation_runs(tmp_path, mnist_dir, run_py):
    proc = run_py("--config=experiments/expanded_data.py:n=30", f"--workdir={tmp_path}",
                  "--config.train_size=100", "--config.num_epochs=1", "--config.augment_shift=1")
    assert proc.returncode == 0, proc.stderr
    assert "train 500," in proc.stdout   # 100 images and their four shifts
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_images"] == 500 and summary["name"] == "expanded_data_n30"


def test_plots_off_writes_no_figures(tmp_path, tiny_config, load_synthetic):
    from mnist_cnn import driver
    load_synthetic()
    c = tiny_config(num_epochs=1, train_size=64, plots=False)
    summary = driver.run(c, str(tmp_path / "w"), log=lambda *a: None)
    assert (tmp_path / "w" / "summary.json").exists() and summary["epochs_run"] == 1
    assert not list((tmp_path / "w").glob("*.png"))
    c.plots = True   # the same run with figures draws three
    driver.run(c, str(tmp_path / "p"), log=lambda *a: None)
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == [
        "errors.png", "filters.png", "learning_curves.png"]


def test_no_checkpoints_no_tensorboard_and_phase_times(tmp_path, tiny_config, load_synthetic):
    """keep_checkpoints=0 saves no checkpoint and tensorboard=False writes no event
    files (metrics.jsonl and summary.json as always); phase_time_s splits this process's
    time: compiling is part of planning, and each phase lies within the run's wall."""
    from mnist_cnn import driver
    load_synthetic()
    c = tiny_config(num_epochs=2, train_size=64, plots=False, keep_checkpoints=0,
                    tensorboard=False)
    summary = driver.run(c, str(tmp_path / "w"), log=lambda *a: None)
    names = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert names == [".lock", "config.json", "metrics.jsonl", "summary.json"], names
    assert len((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()) == 2
    t = summary["phase_time_s"]
    assert set(t) == {"load", "plan", "compile", "train", "evaluate", "test_pass"}
    assert 0 < t["compile"] <= t["plan"] and 0 <= t["test_pass"] <= t["evaluate"] > 0
    assert sum(t[k] for k in ("load", "plan", "train", "evaluate")) <= summary["wall_time_s"] + 0.01
    stopped = driver.Interrupted(15, 1, 3, saved=driver.config_saves(c))
    assert "no checkpoint kept (keep_checkpoints=0): re-running starts over" in str(stopped)
