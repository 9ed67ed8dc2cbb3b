"""run.py --mode=committee: a committee file's members trained and voted in one command,
resumed after a kill, and bad input refused before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mnist_cnn import committee_config, committee_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("num_epochs=1", "train_size=1000", "plots=False")


def _run_py(*args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def committee_file(path, overrides=TINY, seeds=(0, 1), extra=()):
    path.write_text(
        "from mnist_cnn.committee_config import committee, members\n"
        "def get_config():\n"
        f"    return committee(members('experiments/shallow.py', {tuple(overrides)!r}, "
        f"seeds={tuple(seeds)!r}) + {tuple(extra)!r}, rule='mean_softmax', name='tiny')\n")
    return str(path)


def _one_error_line(err):
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_plan_stacks_consecutive_seeds_and_keeps_started_members_alone(tmp_path):
    """Members identical but for consecutive seeds become one stacked run; one that
    already has its own run directory, or a different config, or a gap in the seeds,
    breaks the stack; with stacking off every member is its own run."""
    ms = (committee_config.members("experiments/shallow.py", TINY, (0, 1, 2, 4))
          + committee_config.members("experiments/dbl_conv_relu.py", TINY, (5,)))
    c = committee_config.committee(ms, rule="mean_softmax")
    plan = committee_run.plan_jobs(c, str(tmp_path), stack=True)
    assert [(len(j.members), j.config.num_members, j.config.seed) for j in plan] == [
        (3, 3, 0), (1, 1, 4), (1, 1, 5)]
    os.makedirs(tmp_path / committee_config.member_name(1, ms[1]))
    plan = committee_run.plan_jobs(c, str(tmp_path), stack=True)
    assert [j.config.seed for j in plan] == [0, 1, 2, 4, 5]
    assert all(j.config.num_members == 1 for j in plan)
    assert len(committee_run.plan_jobs(c, str(tmp_path / "new"), stack=False)) == 5


def test_archived_members_train_nothing_and_vote_their_outputs(tmp_path, mnist_dir):
    """The 31-network committee's members are all archived: --mode=committee trains
    nothing and votes their saved outputs, 25 test errors, the recorded vote."""
    w = tmp_path / "s"
    code, out, err = _finish(_run_py(
        "--mode=committee", "--config=experiments/committees/four_conv_and_allconv.py",
        f"--workdir={w}"))
    assert code == 0, err
    summary = json.loads((w / "summary.json").read_text())
    assert summary["test_errors"] == 25 and summary["size"] == 31
    assert sorted(os.listdir(w)) == ["committee.json", "errors.png", "outputs.npz",
                                     "summary.json", "vote.json"]


@pytest.mark.slow
def test_trains_votes_and_resumes_after_a_kill_in_its_second_member(tmp_path, mnist_dir):
    """Two tiny members trained one after the other (--nocommittee_stack): killed with
    SIGKILL inside the second member and run again, the committee finishes with the
    same vote as one run uninterrupted, and the first member is not retrained."""
    spec = committee_file(tmp_path / "tiny.py",
                          TINY + ("checkpoint_every_steps=5", "chunk_steps=5"))
    flags = ["--mode=committee", f"--config={spec}", "--nocommittee_stack"]
    code, _, err = _finish(_run_py(*flags, f"--workdir={tmp_path / 'clean'}"))
    assert code == 0, err
    w = tmp_path / "killed"
    proc = _run_py(*flags, f"--workdir={w}")
    second = w / ("01_shallow_num_epochs=1_train_size=1000_plots=False_"
                  "checkpoint_every_steps=5_chunk_steps=5_s1") / "checkpoints"
    deadline = time.time() + 300
    while not (second.is_dir() and any(second.iterdir())) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (second.parent / "summary.json").exists()   # killed inside member 2
    first = next(w.glob("00_*")) / "summary.json"
    stamp = first.stat().st_mtime_ns
    code, out, err = _finish(_run_py(*flags, f"--workdir={w}"))
    assert code == 0, err
    assert first.stat().st_mtime_ns == stamp          # the finished member was skipped
    got, want = (json.loads((d / "vote.json").read_text()) for d in (w, tmp_path / "clean"))
    assert got["votes"] == want["votes"]
    named = lambda r: [{k: v for k, v in m.items() if k != "name"} for m in r["members"]]
    assert named(got) == named(want)
    assert 0.3 < want["test_accuracy"] < 0.95       # members that learned something


def test_bad_committee_requests_are_one_line_and_write_nothing(tmp_path):
    spec = committee_file(tmp_path / "tiny.py")
    cases = [
        (["--config=experiments/shallow.py"], "--mode=committee takes a committee file"),
        ([f"--config={spec}", "--workdir="], "--workdir is required"),
    ]
    for args, fragment in cases:
        code, _, err = _finish(_run_py("--mode=committee", f"--workdir={tmp_path / 'w'}",
                                       *args))
        assert code == 2 and fragment in _one_error_line(err)
    assert not (tmp_path / "w").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "committee.json").write_text(json.dumps({"members": [], "rule": "plurality"}))
    code, _, err = _finish(_run_py("--mode=committee", f"--config={spec}",
                                   f"--workdir={other}"))
    assert code == 2 and "holds another committee" in _one_error_line(err)
    assert sorted(os.listdir(other)) == ["committee.json"]
    bad = committee_file(tmp_path / "bad.py", TINY + ("no_such_field=1",))
    code, _, err = _finish(_run_py("--mode=committee", f"--config={bad}",
                                   f"--workdir={tmp_path / 'b'}"))
    assert code == 2 and "committee member" in _one_error_line(err)
    assert not (tmp_path / "b").exists()
