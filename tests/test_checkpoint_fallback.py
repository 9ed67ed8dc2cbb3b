"""A newest checkpoint that cannot be restored (mnist_cnn/checkpoint.py, driver._resume):
resume falls back to the one before with one line naming the step skipped and why,
sets the damaged one aside, and ends as the uninterrupted run did; when none restores,
one error line and nothing in the run directory changes."""

import json
import os
import pathlib
import shutil

import flax
import numpy as np
import pytest

from mnist_cnn import checkpoint, cli, driver, networks, train

TIMING = {"epoch_train_s", "train_images_per_s", "wall_time_s", "compile_time_s",
          "phase_time_s"}
_REFERENCE = {}   # the finished reference run, trained once per test process


def config(tiny_config):
    """Three epochs of 16 mini-batches, shuffled, dropout, checkpointed every 8 steps,
    the newest three kept: steps 32, 40 and 48 at the end."""
    return tiny_config(num_epochs=3, shuffle=True, checkpoint_every_steps=8,
                       chunk_steps=8, keep_checkpoints=3, plots=False)


@pytest.fixture
def resumable(tmp_path_factory, tmp_path, tiny_config, load_synthetic):
    """(a copy of the finished reference run without its summary.json, as a run killed
    after its last checkpoint leaves it, the reference run's directory)."""
    load_synthetic()
    if "run" not in _REFERENCE:
        w = tmp_path_factory.mktemp("reference") / "run"
        driver.run(config(tiny_config), str(w), log=lambda *a: None)
        _REFERENCE["run"] = w
    w = tmp_path / "run"
    shutil.copytree(_REFERENCE["run"], w)
    os.remove(w / "summary.json")
    assert steps(w) == [32, 40, 48]
    return w, _REFERENCE["run"]


def steps(workdir):
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def final_state(workdir, c):
    model = networks.from_config(c)
    like = train.with_ema(train.init_states(model, train.make_optimizer(c, 16), c.seed, 1),
                          c.ema_decay)
    state, meta = checkpoint.restore_latest(checkpoint.reader(str(workdir)), like)
    flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(state), sep="/")
    return {k: np.asarray(v) for k, v in flat.items() if v is not None}, meta


def results(workdir):
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING}
    summary = json.loads((workdir / "summary.json").read_text())
    metrics = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return strip(summary), [strip(m) for m in metrics]


def _corrupt(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, 2 * len(data) // 3 + 1):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def flip_array_bytes(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        if os.path.basename(root) == "d":
            for name in files:
                _corrupt(pathlib.Path(root) / name)


def empty_every_file(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            open(os.path.join(root, name), "w").close()


def remove_state(step_dir):
    shutil.rmtree(step_dir / "state")


def truncate_record(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"epoch": 2')


def record_without_a_field(step_dir):
    record = json.loads((step_dir / "meta" / "metadata").read_text())
    del record["metrics"]
    (step_dir / "meta" / "metadata").write_text(json.dumps(record))


@pytest.mark.parametrize("damage", [flip_array_bytes, remove_state, truncate_record,
                                    record_without_a_field])
def test_resume_falls_back_to_the_checkpoint_before(resumable, tiny_config, damage, capfd):
    w, reference = resumable
    damage(w / "checkpoints" / "48")
    lines = []
    driver.run(config(tiny_config), str(w), log=lines.append)
    said = [l for l in lines if "cannot be restored" in l]
    assert len(said) == 1, lines
    assert said[0].startswith("the checkpoint at step 48 cannot be restored (")
    assert said[0].endswith("set aside as checkpoints/48.unrestorable; falling back to "
                            "step 40, the newest that restores")
    assert "resuming from the checkpoint at step 8 of 16 in epoch 3" in lines
    assert "Traceback" not in capfd.readouterr().err
    # The same result as the run never interrupted, bit for bit.
    assert results(w) == results(reference)
    got, meta = final_state(w, config(tiny_config))
    want, _ = final_state(reference, config(tiny_config))
    assert meta["epoch"] == 3 and sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The damaged checkpoint is kept aside; step 48 was saved anew.
    assert steps(w) == [32, 40, 48] and (w / "checkpoints" / "48.unrestorable").is_dir()


def test_two_damaged_checkpoints_fall_back_past_both(resumable, tiny_config):
    w, reference = resumable
    remove_state(w / "checkpoints" / "48")
    truncate_record(w / "checkpoints" / "40")
    lines = []
    driver.run(config(tiny_config), str(w), log=lines.append)
    said = [l for l in lines if "cannot be restored" in l]
    assert [l.split(" cannot")[0] for l in said] == ["the checkpoint at step 48",
                                                     "the checkpoint at step 40"]
    assert all(l.endswith("falling back to step 32, the newest that restores")
               for l in said)
    assert "resuming from the checkpoint at the end of epoch 2" in lines
    assert results(w) == results(reference)
    assert {"40.unrestorable", "48.unrestorable"} <= set(os.listdir(w / "checkpoints"))


def test_a_checkpoint_set_aside_twice_keeps_both(resumable, tiny_config):
    w, _ = resumable
    empty_every_file(w / "checkpoints" / "48")
    shutil.copytree(w / "checkpoints" / "48", w / "checkpoints" / "48.unrestorable")
    lines = []
    driver.run(config(tiny_config), str(w), log=lines.append)
    assert any("set aside as checkpoints/48.unrestorable.1;" in l for l in lines), lines
    assert steps(w) == [32, 40, 48]


def test_no_checkpoint_that_restores_is_one_line_and_changes_nothing(
        resumable, tiny_config, capsys, snapshot):
    w, _ = resumable
    for step in (32, 40, 48):
        empty_every_file(w / "checkpoints" / str(step))
    before = snapshot(w)
    with pytest.raises(driver.RunError) as e:
        driver.run(config(tiny_config), str(w), log=lambda *a: None)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(f"{w / 'checkpoints'}: no checkpoint can be restored (step 48: ")
    assert "; step 40: " in text and "; step 32: " in text
    assert text.endswith("move that directory away and re-run to train from the start, "
                         "or pass --overwrite")
    assert snapshot(w) == before
    # From the command line's handler: one error line, status 2.
    capsys.readouterr()
    assert cli.exit_code(driver.run, config(tiny_config), str(w), False, None,
                         lambda *a: None) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert snapshot(w) == before


def test_a_single_kept_checkpoint_that_cannot_be_restored_is_an_error(resumable,
                                                                      tiny_config):
    w, _ = resumable
    for step in (32, 40):
        shutil.rmtree(w / "checkpoints" / str(step))
    remove_state(w / "checkpoints" / "48")
    with pytest.raises(driver.RunError, match=r"no checkpoint can be restored \(step 48: "
                                              r"KeyError: .*state.*\)"):
        driver.run(config(tiny_config), str(w), log=lambda *a: None)
    assert steps(w) == [48]


def test_restore_latest_names_the_step_it_cannot_restore(resumable, tiny_config):
    """Readers that must not fall back (a vote) get RestoreError for the newest."""
    w, _ = resumable
    truncate_record(w / "checkpoints" / "48")
    with pytest.raises(checkpoint.RestoreError,
                       match=r"^the newest checkpoint \(step 48\) cannot be restored "
                             r"\(JSONDecodeError: "):
        final_state(w, config(tiny_config))
