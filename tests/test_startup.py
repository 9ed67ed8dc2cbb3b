"""Start-up: a training run imports only what it uses (no TFDS, no matplotlib without
figures, no committee code; orbax at its first checkpoint), and JAX's persistent
compilation cache (config.compile_cache) stores the compiled programs, which a second
run loads instead of compiling."""

import json
import os
import subprocess
import sys

import jax
import pytest

from mnist_cnn import checkpoint, driver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run.py as `python run.py ARGS` runs it, then the sorted names of every module the
# process loaded, written to the file named first.
WITH_MODULES = """
import runpy, sys
out, sys.argv = sys.argv[1], ["run.py"] + sys.argv[2:]
try:
    runpy.run_path("run.py", run_name="__main__")
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""
NEVER_IN_TRAINING = ("tensorflow_datasets", "mnist_cnn.committee",
                     "mnist_cnn.committee_run", "mnist_cnn.committee_config")


def _train(tmp_path, name, data_dir, *args):
    """(summary, modules loaded) of a one-epoch dbl_conv_relu run on 40 blank images,
    its compilation cache "auto" under tmp_path/xdg."""
    env = {k: v for k, v in os.environ.items() if k != driver.COMPILE_CACHE_ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    workdir, listing = tmp_path / name, tmp_path / f"{name}.modules"
    proc = subprocess.run(
        [sys.executable, "-c", WITH_MODULES, str(listing),
         "--config=experiments/dbl_conv_relu.py", f"--workdir={workdir}",
         "--config.dataset=custom", f"--config.data_dir={data_dir}",
         "--config.num_epochs=1", "--config.train_size=40", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.exists(str(workdir))
    summary = json.loads((workdir / "summary.json").read_text())
    return summary, set(listing.read_text().split())


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.slow
def test_training_imports_and_the_compilation_cache(tmp_path, idx_dataset_dir):
    data_dir = idx_dataset_dir(tmp_path / "data", n_test=100)
    cache = tmp_path / "xdg" / "mnist_cnn" / "jax"
    first, modules = _train(tmp_path, "first", data_dir, "--config.plots=False")
    assert not [m for m in modules if m.split(".")[0] == "matplotlib"]
    assert not set(NEVER_IN_TRAINING) & modules
    assert "orbax.checkpoint" in modules   # the listing is the run's: it checkpointed
    stored = _entries(cache)
    assert stored, "the first run stored no compiled program"

    second, modules = _train(tmp_path, "second", data_dir, "--config.plots=True")
    assert "matplotlib" in modules and (tmp_path / "second" / "errors.png").exists()
    assert not set(NEVER_IN_TRAINING) & modules
    # every program the second run needed was in the cache: it stored nothing new
    assert _entries(cache) == stored
    assert 0 < second["compile_time_s"] and 0 < first["compile_time_s"]
    # the stored programs compute what the compiled ones did, bit for bit
    losses = [json.loads((tmp_path / name / "metrics.jsonl").read_text())["train_loss"]
              for name in ("first", "second")]
    assert losses[0] == losses[1] and second["test_accuracy"] == first["test_accuracy"]


def test_compile_cache_folder_by_value(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    env = {"XDG_CACHE_HOME": "/xdg"}
    assert driver.compile_cache_dir("auto", env) == "/xdg/mnist_cnn/jax"
    assert driver.compile_cache_dir("auto", {}) == "/home/me/.cache/mnist_cnn/jax"
    assert driver.compile_cache_dir("auto", {**env, driver.COMPILE_CACHE_ENV: ""}) is None
    assert driver.compile_cache_dir("auto", {driver.COMPILE_CACHE_ENV: "/c"}) == "/c"
    assert driver.compile_cache_dir("", env) is None
    assert driver.compile_cache_dir("~/jc", env) == "/home/me/jc"
    assert driver.compile_cache_dir("rel", env) == os.path.abspath("rel")


def test_no_cache_creates_no_folder(tmp_path, monkeypatch, tiny_config, load_synthetic):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(driver.COMPILE_CACHE_ENV)
    load_synthetic()
    summary = driver.run(tiny_config(num_epochs=1, train_size=64, plots=False,
                                     compile_cache=""),
                         str(tmp_path / "run"), log=lambda *a: None)
    assert summary["epochs_run"] == 1
    assert not (tmp_path / "xdg").exists()
    assert jax.config.jax_compilation_cache_dir is None


def test_unusable_cache_folders(tmp_path, monkeypatch, tiny_config):
    """A named folder that cannot be one, or that every user may write to, is refused
    in one line; the default's falls back to no cache, said in one line."""
    (tmp_path / "file").write_text("")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for bad, says in [(tmp_path / "file", "config.compile_cache"),
                      (shared, "every user may write to it")]:
        with pytest.raises(driver.RunError, match=says):
            driver.use_compile_cache(tiny_config(compile_cache=str(bad)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    monkeypatch.delenv(driver.COMPILE_CACHE_ENV)
    lines = []
    assert driver.use_compile_cache(tiny_config(), lines.append) is None
    assert len(lines) == 1 and "compiling without a cache" in lines[0]
    assert jax.config.jax_compilation_cache_dir is None


def test_checkpoint_manager_made_at_first_use(tmp_path):
    """A run with no checkpoint yet makes no orbax manager until it saves one."""
    lazy = checkpoint.Lazy(str(tmp_path), keep=2)
    assert lazy.all_steps() == [] and lazy._manager is None
    state = {"w": jax.numpy.arange(3.0)}
    checkpoint.save(lazy, 5, state, {"epoch": 1})
    assert lazy._manager is not None
    again = checkpoint.Lazy(str(tmp_path), keep=2)
    assert again.all_steps() == [5]
    restored, meta = checkpoint.restore_step(again, 5, state)
    assert meta == {"epoch": 1} and restored["w"].tolist() == [0.0, 1.0, 2.0]
