"""A committee of finished runs (mnist_cnn/committee.py, run.py --mode=vote): the tally
against hand-counted votes, old run directories, agreement with the driver's own
evaluation and ensemble vote, and bad input."""

import json
import os
import re

import numpy as np
import pytest

from mnist_cnn import augment, committee, data, driver
from mnist_cnn import config as config_lib


def onehot_probs(preds, confidence):
    """(M, N) predictions -> (M, N, 10) probabilities: `confidence` on the prediction,
    the rest spread evenly."""
    preds = np.asarray(preds)
    conf = np.asarray(confidence, np.float64)[..., None]
    p = np.broadcast_to((1 - conf) / 9, (*preds.shape, 10)).copy()
    np.put_along_axis(p, preds[..., None], conf, axis=-1)
    return p


def test_tally_counts_votes_by_hand():
    # Three members, four images. Image 2: members say 3, 5, 5 -> plurality 5; but
    # member 0 is sure of 3 (0.99) and the others barely prefer 5 (0.2 each), so the
    # mean softmax says 3. Image 3: all differ -> plurality takes member 0's (the book's
    # first-seen rule).
    preds = [[1, 2, 3, 7], [1, 2, 5, 8], [1, 0, 5, 9]]
    conf = [[0.9, 0.9, 0.99, 0.9], [0.9, 0.9, 0.2, 0.9], [0.9, 0.9, 0.2, 0.9]]
    probs = onehot_probs(preds, conf)
    labels = np.array([1, 2, 3, 7])
    got = committee.tally(probs, probs, labels, labels, ["a", "b", "c"])
    assert [m["test_accuracy"] for m in got["members"]] == [1.0, 0.5, 0.25]
    assert got["votes"]["plurality"]["test_accuracy"] == 0.75       # wrong on image 2
    assert got["votes"]["mean_softmax"]["test_accuracy"] == 1.0
    assert got["votes"]["plurality"]["test_errors"] == 1
    # Images 0-3 are wrong for 0, 1 (member 2 says 0), 2 (members 1, 2) and 2 members.
    assert got["test_wrong_by"] == [1, 1, 2, 0]
    assert [m["test_wrong"] for m in got["members"]] == [[], [2, 3], [1, 2, 3]]
    assert got["votes"]["plurality"]["test_wrong"] == [2]
    assert got["votes"]["mean_softmax"]["test_wrong"] == []
    # Pairs (a, b) and (a, c) share nothing; (b, c) share 2 of 3 images.
    assert got["mean_error_jaccard"] == pytest.approx((0 + 0 + 2 / 3) / 3)
    assert "test-error sets: 0.22" in committee.markdown(got)
    assert "wrong for k of the 3 networks: k=1: 1, k=2: 2" in committee.markdown(got)
    assert got["chosen_vote"] == "mean_softmax" and got["test_accuracy"] == 1.0
    assert got["votes"]["mean_softmax"]["validation_nll"] == pytest.approx(
        _committee_nll(probs, labels, [0, 1, 2]))
    assert [m["validation_nll"] for m in got["members"]] == pytest.approx(
        [_committee_nll(probs, labels, [i]) for i in range(3)])
    # The choice follows validation, not test: with validation labels that favour
    # plurality, plurality is reported even though mean_softmax is better on test.
    got = committee.tally(probs, probs, np.array([1, 2, 5, 7]), labels, ["a", "b", "c"])
    assert got["chosen_vote"] == "plurality" and got["test_accuracy"] == 0.75
    # A tie in validation goes to plurality (the book's vote).
    got = committee.tally(probs, probs, np.array([0, 0, 0, 0]), labels, ["a", "b", "c"])
    assert got["chosen_vote"] == "plurality"
    # A vote fixed in advance is reported whatever validation says.
    for rule, acc in (("mean_softmax", 1.0), ("plurality", 0.75)):
        for val in ([1, 2, 5, 7], [1, 2, 3, 7]):
            got = committee.tally(probs, probs, np.array(val), labels, ["a", "b", "c"], rule)
            assert got["chosen_vote"] == rule and got["test_accuracy"] == acc
            assert got["vote_rule"] == rule
            assert "(chosen in advance)" in committee.markdown(got)


def test_mean_jaccard_against_boolean_masks():
    # Reference: each error set as a boolean mask over 50 images, overlap = AND / OR.
    rng = np.random.default_rng(0)
    masks = rng.random((5, 50)) < 0.2
    masks[4] = False                                   # a network with no errors
    sets = [np.flatnonzero(m).tolist() for m in masks]

    def ref(i, j):
        union = np.sum(masks[i] | masks[j])
        return np.sum(masks[i] & masks[j]) / union if union else 1.0

    within = [ref(i, j) for i in range(5) for j in range(i + 1, 5)]
    assert committee.mean_jaccard(sets) == pytest.approx(np.mean(within))
    across = [ref(i, j) for i in range(2) for j in range(2, 5)]
    assert committee.mean_jaccard(sets[:2], sets[2:]) == pytest.approx(np.mean(across))
    assert committee.jaccard([], []) == 1.0 and committee.jaccard([1], [2]) == 0.0
    assert committee.mean_jaccard(sets[:1]) is None
    assert committee.mean_jaccard([], sets) is None
    assert committee.wrong_images(np.array([3, 1, 4, 1]), [3, 2, 4, 7]) == [1, 3]


def test_group_overlaps_against_boolean_masks():
    # Reference: every pair of error masks (AND / OR) averaged by hand per group pair.
    rng = np.random.default_rng(1)
    masks = rng.random((6, 40)) < 0.25
    group = ["old", "new", "old", "lone", "new", "old"]
    errors = {f"net{i}": np.flatnonzero(m).tolist() for i, m in enumerate(masks)}

    def ref(i, j):
        return np.sum(masks[i] & masks[j]) / max(np.sum(masks[i] | masks[j]), 1)

    def mean_over(ga, gb):
        pairs = [(i, j) for i in range(6) for j in range(6)
                 if group[i] == ga and group[j] == gb and (ga != gb or i < j)]
        return np.mean([ref(i, j) for i, j in pairs])

    got = committee.group_overlaps(errors, lambda n: group[int(n[3:])])
    assert list(got) == ["old-old", "old-new", "old-lone", "new-new", "new-lone"]
    for key, v in got.items():
        assert v == pytest.approx(mean_over(*key.split("-"))), key
    assert committee.group_overlaps({"a": [1]}, lambda n: "g") == {}


def _committee_nll(probs, labels, members):
    """Validation cross-entropy of the mean softmax of `members`, image by image."""
    total = 0.0
    for n, y in enumerate(labels):
        total -= np.log(sum(probs[m][n][y] for m in members) / len(members))
    return total / len(labels)


def test_greedy_selection_takes_complementary_networks_and_leaves_a_bad_one():
    """Six images. Networks 0 and 1 are each sure and right on one half and sure and
    wrong on the other (mirror images); network 2 is sure and wrong everywhere. Forward
    selection takes 0 (tied with 1), then 1 (together they put 0.46 on
    every right answer), and stops: adding 2 would raise the cross-entropy."""
    labels = np.array([0, 1, 2, 3, 4, 5])
    wrong = (labels + 1) % 10
    half = np.arange(6) < 3
    net0 = onehot_probs([np.where(half, labels, wrong)], [[0.9] * 6])[0]
    net1 = onehot_probs([np.where(half, wrong, labels)], [[0.9] * 6])[0]
    net2 = onehot_probs([wrong], [[0.9] * 6])[0]
    probs = np.stack([net0, net1, net2])
    assert _committee_nll(probs, labels, [0, 1]) < _committee_nll(probs, labels, [0])
    assert sorted(committee.greedy_select(probs, labels)) == [0, 1]
    assert sorted(committee.greedy_select(probs[::-1], labels)) == [1, 2]   # the same two
    # One network that beats every committee it could join: chosen alone.
    sure = onehot_probs([labels], [[0.999] * 6])[0]
    assert committee.greedy_select(np.stack([net0, sure, net1]), labels) == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_selection_is_a_forward_search_on_validation_cross_entropy(seed):
    """Random networks: each added network is the one (earliest on a tie) that makes the
    committee's validation cross-entropy lowest, computed image by image here; the
    committee's is below every single network's; no unused network would lower it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 40)
    logits = rng.normal(size=(7, 40, 10)) + 2.0 * np.eye(10)[labels] * rng.uniform(
        0, 1.5, (7, 1, 1))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    got = committee.greedy_select(probs, labels)
    for k in range(len(got)):
        scores = {m: _committee_nll(probs, labels, got[:k] + [m])
                  for m in range(7) if m not in got[:k]}
        assert scores[got[k]] == pytest.approx(min(scores.values()), rel=1e-12)
    final = _committee_nll(probs, labels, got)
    assert all(final <= _committee_nll(probs, labels, [m]) + 1e-12 for m in range(7))
    assert all(_committee_nll(probs, labels, got + [m]) >= final - 1e-12
               for m in range(7) if m not in got)


def test_old_config_gets_the_defaults_of_newer_fields(tmp_path):
    from experiments import dbl_conv_relu
    saved = json.loads(dbl_conv_relu.get_config().to_json())
    del saved["micro_batch"], saved["bn_calibration_images"]
    for layer in saved["layers"]:
        layer.pop("batch_norm", None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    c = committee.load_config(str(tmp_path))
    assert c.micro_batch == 0 and c.bn_calibration_images == 10_000
    assert not config_lib.uses_batch_norm(c)
    assert c.layers[2].features == 100 and c.learning_rate == 0.03


def test_vote_of_finished_runs_matches_what_the_runs_reported(tmp_path, tiny_runs, run_py):
    """An ensemble of 2 with batch norm trained by the driver, and a single network of
    another family (tiny_runs' c): the committee's member accuracies are the runs' final
    test accuracies, and the 2-network run alone votes as its own summary says."""
    from experiments import modern
    ens = modern.get_config("members=2,bn=1,fc=32")
    ens.update(num_epochs=1, warmup_epochs=0.5, train_size=300, batch_size=30, plots=False,
               bn_calibration_images=200)
    ens.layers[0].features, ens.layers[1].features = 4, 8
    s_ens = driver.run(ens, str(tmp_path / "ens"), log=lambda *a: None)
    one, s_one = tiny_runs["c"]
    alone = committee.vote_runs([str(tmp_path / "ens")], log=lambda *a: None)
    assert alone["votes"]["plurality"]["test_accuracy"] == pytest.approx(
        s_ens["final_test_accuracy"])
    picked = committee.vote_runs([str(tmp_path / "ens"), one], log=lambda *a: None,
                                 select="greedy")
    names = [m["name"] for m in picked["candidates"]]
    assert len(names) == 3 and 1 <= picked["size"] <= 3
    assert set(m["name"] for m in picked["members"]) <= set(names)
    out = tmp_path / "vote.json"
    proc = run_py("--mode=vote", f"--vote_runs={tmp_path / 'ens'},{one}", f"--vote_out={out}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["size"] == 3 and "| **plurality vote**" in proc.stdout
    metrics = json.loads((tmp_path / "ens" / "metrics.jsonl").read_text().splitlines()[-1])
    got = [m["test_accuracy"] for m in result["members"]]
    assert got[:2] == pytest.approx(metrics["members_test_accuracy"])
    assert got[2] == pytest.approx(s_one["final_test_accuracy"])
    assert [m["epoch"] for m in result["members"]] == [1, 1, 1]


@pytest.mark.slow
def test_weight_average_run_evaluates_the_average_and_reports_the_raw_weights(tmp_path,
                                                                            small_mnist):
    """A batch-norm run with config.ema_decay: its raw weights' accuracies (raw_*) are
    those of the same run without the average (the average does not change training:
    up to one image in float rounding), its reported accuracies are the calibrated
    average's (the committee, which votes with a checkpoint's average, agrees), and the
    summary selects each by validation."""
    from experiments import modern
    small_mnist(2000)
    one = 1.5 / 2000   # one image
    runs = {}
    for name, ema in (("plain", 0.0), ("ema", 0.9)):
        c = modern.get_config("fc=16,bn=1")
        c.update(ema_decay=ema, num_epochs=2, warmup_epochs=0.5, train_size=300, batch_size=30,
                 plots=False, bn_calibration_images=200)
        c.layers[0].features, c.layers[1].features = 4, 8
        s = driver.run(c, str(tmp_path / name), log=lambda *a: None)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = (s, [json.loads(l) for l in lines])
    (plain, plain_m), (ema, ema_m) = runs["plain"], runs["ema"]
    for a, b in zip(plain_m, ema_m):
        assert b["raw_validation_accuracy"] == pytest.approx(a["validation_accuracy"],
                                                             abs=one)
        assert b["raw_test_accuracy"] == pytest.approx(a["test_accuracy"], abs=one)
        assert "raw_test_accuracy" not in a
    assert [m["test_accuracy"] for m in ema_m] != [m["raw_test_accuracy"] for m in ema_m]
    assert ema["raw_test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=one)
    assert ema["raw_best_epoch"] == plain["best_epoch"]
    voted = committee.vote_runs([str(tmp_path / "ema")], log=lambda *a: None)
    assert voted["votes"]["plurality"]["test_accuracy"] == pytest.approx(
        ema["final_test_accuracy"])


def _tiny_run(workdir, **fields):
    from experiments import dbl_conv_relu
    c = dbl_conv_relu.get_config()
    c.update({"num_epochs": 1, "train_size": 100, "batch_size": 50, "plots": False,
              **fields})
    c.layers[0].features, c.layers[1].features, c.layers[2].features = 2, 4, 8
    return driver.run(c, str(workdir), log=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Three finished tiny runs on real MNIST, shared by the tests that vote them (which
    write nothing into them): a (seed 0), b (seed 1, trained on the validation images
    too) and c (seed 2). {name: (directory, summary)}."""
    if not os.path.isdir(os.environ.get("MNIST_DATA_DIR", "")):
        pytest.skip("real MNIST not found: set MNIST_DATA_DIR")
    root = tmp_path_factory.mktemp("tiny_runs")
    fields = {"a": {}, "b": dict(seed=1, train_on_validation=True), "c": dict(seed=2)}
    return {name: (str(root / name), _tiny_run(root / name, **f))
            for name, f in fields.items()}


def test_run_trained_on_validation_votes_only_by_a_rule_fixed_in_advance(
        tmp_path, tiny_runs, run_py, assert_user_error):
    """Validation cannot choose the vote (or pick members) of a committee with a run
    that trained on it: auto and greedy are refused before any network is evaluated;
    a fixed rule is reported as chosen."""
    (plain, _), (tv, s_tv) = tiny_runs["a"], tiny_runs["b"]
    assert s_tv["train_images"] == 10_100 and s_tv["selection"] == "last_epoch"
    both = [plain, tv]
    with pytest.raises(committee.CommitteeError, match="--vote_rule=plurality or mean"):
        committee.vote_runs(both, log=lambda *a: None)
    with pytest.raises(committee.CommitteeError, match="--vote_select=all"):
        committee.vote_runs(both, log=lambda *a: None, select="greedy",
                            rule="mean_softmax")
    got = committee.vote_runs(both, log=lambda *a: None, rule="mean_softmax")
    assert got["chosen_vote"] == "mean_softmax" and got["vote_rule"] == "mean_softmax"
    assert got["test_accuracy"] == got["votes"]["mean_softmax"]["test_accuracy"]
    assert got["members"][1]["test_accuracy"] == pytest.approx(s_tv["final_test_accuracy"])
    proc = run_py("--mode=vote", f"--vote_runs={','.join(both)}",
                  f"--vote_out={tmp_path / 'v.json'}")
    assert_user_error(proc, "trained on the validation images", "--vote_rule")
    assert not (tmp_path / "v.json").exists()


def test_bad_vote_requests(tmp_path, mnist_dir, run_py, assert_user_error):
    proc = run_py("--mode=vote", "--vote_runs=")
    assert_user_error(proc, "--vote_runs is empty")
    proc = run_py("--mode=vote", f"--vote_runs={tmp_path}")
    assert_user_error(proc, "holds no run (no config.json)")
    from experiments import dbl_conv_relu
    (tmp_path / "config.json").write_text(dbl_conv_relu.get_config().to_json())
    proc = run_py("--mode=vote", f"--vote_runs={tmp_path}", f"--vote_out={tmp_path / 'v.json'}")
    assert_user_error(proc, "has no checkpoint to vote with")
    assert not (tmp_path / "v.json").exists()
    proc = run_py("--mode=vote", f"--vote_runs={tmp_path}", "--vote_select=best")
    assert_user_error(proc, "--vote_select=best: value should be one of <all|greedy>")
    with pytest.raises(committee.CommitteeError, match="--vote_select must be one of"):
        committee.vote_runs([str(tmp_path)], select="best")
    proc = run_py("--mode=vote", f"--vote_runs={tmp_path}", "--vote_rule=borda")
    assert_user_error(proc, "--vote_rule=borda: value should be one of")
    with pytest.raises(committee.CommitteeError, match="--vote_rule must be one of"):
        committee.vote_runs([str(tmp_path)], rule="borda")


def _vote_option_cases(tmp_path):
    missing = tmp_path / "no"
    return [
        (dict(outputs_precision="half"),
         "--vote_save_precision must be one of float32, float16, got 'half'"),
        (dict(select="best"), "--vote_select must be one of all, greedy, got 'best'"),
        (dict(rule="borda"),
         "--vote_rule must be one of auto, plurality, mean_softmax, got 'borda'"),
        (dict(eval_shifts=28), "--vote_eval_shifts must be in [0, 27] pixels (or -1: each "
         "run's own config.eval_shifts), got 28"),
        (dict(eval_rotate=50.0), "--vote_eval_rotate must be in [0, 45.0] degrees (or -1: "
         "each run's own config.eval_rotate), got 50.0"),
        (dict(eval_zoom=-0.1), "--vote_eval_zoom must be in [0, 0.5] (or -1: each run's "
         "own config.eval_zoom), got -0.1"),
        (dict(outputs_path="x.json"), "--vote_save_outputs=x.json: the file name must end "
         "in .npz"),
        (dict(outputs_path=str(missing / "x.npz")), f"--vote_save_outputs={missing}/x.npz: "
         f"no directory {missing}; create it first"),
        (dict(select="best", rule="borda"),
         "--vote_select must be one of all, greedy, got 'best'"),
    ]


def test_vote_options_name_the_bad_flag_word_for_word(tmp_path):
    for fields, message in _vote_option_cases(tmp_path):
        with pytest.raises(committee.CommitteeError) as e:
            committee.VoteOptions(**fields).check()
        assert str(e.value) == message, fields
    fine = committee.VoteOptions(eval_shifts=27, eval_rotate=45.0, eval_zoom=0.5,
                                 select="greedy", rule="mean_softmax",
                                 outputs_path=str(tmp_path / "x.npz"),
                                 outputs_precision="float16")
    assert fine.check() is fine and committee.VoteOptions().check() == committee.VoteOptions()
    assert fine.views() == dict(eval_shifts=27, eval_rotate=45.0, eval_zoom=0.5)


def test_vote_runs_checks_its_options_before_its_runs():
    """vote_runs takes a VoteOptions, its fields one by one, or both (the fields win);
    every option is checked before the list of runs."""
    with pytest.raises(committee.CommitteeError, match="--vote_rule must be one of"):
        committee.vote_runs([], options=committee.VoteOptions(rule="borda"))
    with pytest.raises(committee.CommitteeError, match="--vote_rule must be one of"):
        committee.vote_runs([], rule="borda")
    with pytest.raises(committee.CommitteeError, match="--vote_runs is empty"):
        committee.vote_runs([], options=committee.VoteOptions(rule="borda"),
                            rule="plurality")


def test_vote_flags_become_vote_options():
    """run.py --mode=vote's flags (-1: each run's own views) as the options voted with."""
    from types import SimpleNamespace

    from mnist_cnn.cli import vote
    flags = SimpleNamespace(config=None, vote_runs=["a", "b.npz"], vote_eval_shifts=-1,
                            vote_eval_rotate=5.0, vote_eval_zoom=-1.0,
                            vote_select="greedy", vote_rule="plurality",
                            vote_save_outputs="out.npz", vote_save_precision="float16")
    runs, options = vote.vote_plan(flags)
    assert runs == ["a", "b.npz"]
    assert options == committee.VoteOptions(
        eval_shifts=None, eval_rotate=5.0, eval_zoom=None, select="greedy",
        rule="plurality", outputs_path="out.npz", outputs_precision="float16")


def test_run_py_vote_flags_offer_exactly_the_committees_choices():
    # The vote flags keep jax out of flag parsing, so they spell the choices out again:
    # they must stay the ones committee.vote_runs accepts.
    from absl import flags

    import mnist_cnn.cli.vote   # noqa: F401  (defines the vote flags)
    enum = lambda name: tuple(flags.FLAGS[name].parser.enum_values)
    assert enum("vote_select") == committee.SELECTIONS
    assert enum("vote_rule") == committee.RULES
    assert enum("vote_save_precision") == committee.SAVE_PRECISIONS


def test_helpshort_lists_training_flags_only(run_py):
    """run.py --helpshort: the training (and multi-process) flags, none of another
    mode's; --helpfull lists those under their mode's module."""
    short = run_py("--helpshort")   # absl's help exits with status 1
    assert "Traceback" not in short.stderr
    listed = {m.group(1) for m in re.finditer(r"^  --(?:\[no\])?(\w+)", short.stdout,
                                              re.M)}
    assert {"config", "workdir", "mode", "overwrite", "coordinator_address"} <= listed
    assert not [f for f in listed if f.startswith(("vote_", "sweep", "bench"))
                or f in ("batch_sizes", "conv_impls", "repeats")], listed
    full = run_py("--helpfull").stdout
    for module in ("mnist_cnn.cli.vote", "mnist_cnn.cli.sweep", "mnist_cnn.cli.benchmark"):
        assert module + ":" in full, module


def _outputs(m=3, n_val=4, n_test=5, seed=0, **over):
    rng = np.random.default_rng(seed)
    p = lambda n: rng.dirichlet(np.ones(10), size=(m, n)).astype(np.float32)
    out = dict(names=[f"net{i}" for i in range(m)], epochs=[3, "2 + 7 steps", 3][:m],
               eval_shifts=[0, 1, 0][:m], eval_rotate=[0.0, 5.0, 0.0][:m],
               eval_zoom=[0.0, 0.0, 0.1][:m], trained_on_validation=[False, True, False][:m],
               validation_probabilities=p(n_val), test_probabilities=p(n_test),
               validation_sha256="0" * 64, test_sha256="1" * 64)
    out.update(over)
    return out


def test_saved_outputs_round_trip_and_damaged_files_are_refused(tmp_path):
    out = _outputs()
    path = str(tmp_path / "o.npz")
    committee.save_outputs(path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]   # no temporary left
    got = committee.load_outputs(path)
    assert list(got["names"]) == out["names"]
    assert list(got["epochs"]) == ["3", "2 + 7 steps", "3"]
    assert list(got["eval_shifts"]) == [0, 1, 0]
    assert list(got["eval_rotate"]) == [0.0, 5.0, 0.0]
    assert list(got["eval_zoom"]) == [0.0, 0.0, 0.1]
    assert list(got["trained_on_validation"]) == [False, True, False]
    for k in ("validation_probabilities", "test_probabilities"):
        np.testing.assert_array_equal(got[k], out[k])      # float32 kept bit for bit
    assert str(got["validation_sha256"]) == "0" * 64 and str(got["test_sha256"]) == "1" * 64
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(committee.CommitteeError, match="is not a committee outputs file"):
        committee.load_outputs(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(committee.CommitteeError, match="missing format, names"):
        committee.load_outputs(str(tmp_path / "other.npz"))
    short = dict(out, test_probabilities=out["test_probabilities"][:2])
    committee.save_outputs(str(tmp_path / "short.npz"), short)
    with pytest.raises(committee.CommitteeError, match="disagree in shape"):
        committee.load_outputs(str(tmp_path / "short.npz"))


def test_float16_outputs_are_a_smaller_archive_read_back_as_float32(tmp_path):
    """precision="float16" stores the probabilities rounded to half precision (each
    within 2**-12 of the float32 value for values in [0, 1]); they load as float32, and
    an unknown precision is refused before anything is written."""
    out = _outputs(n_val=2000, n_test=2000)
    full, half = str(tmp_path / "full.npz"), str(tmp_path / "half.npz")
    committee.save_outputs(full, out)
    committee.save_outputs(half, out, precision="float16")
    with np.load(half) as f:
        assert f["test_probabilities"].dtype == np.float16
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    got = committee.load_outputs(half)
    for k in ("validation_probabilities", "test_probabilities"):
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], out[k], rtol=0, atol=2.0 ** -12)
        assert not np.array_equal(got[k], out[k])    # rounded: not a float32 copy
    with pytest.raises(committee.CommitteeError, match="precision must be one of"):
        committee.save_outputs(str(tmp_path / "x.npz"), out, precision="int8")
    assert not os.path.exists(tmp_path / "x.npz")


def test_outputs_saved_before_rotated_views_existed_read_as_none(tmp_path):
    """A file written before eval_rotate/eval_zoom were saved (as the outputs saved on
    2026-11-27 were) loads with no rotated or zoomed views, and votes as before."""
    out = _outputs()
    path = str(tmp_path / "o.npz")
    committee.save_outputs(path, out)
    with np.load(path) as f:
        old = {k: f[k] for k in f.files if k not in ("eval_rotate", "eval_zoom")}
    np.savez_compressed(tmp_path / "old.npz", **old)
    got = committee.load_outputs(str(tmp_path / "old.npz"))
    assert list(got["eval_rotate"]) == [0.0] * 3 and list(got["eval_zoom"]) == [0.0] * 3
    np.testing.assert_array_equal(got["test_probabilities"], out["test_probabilities"])


def test_saved_outputs_vote_as_their_runs_did(tmp_path, tiny_runs, run_py):
    """A committee's saved outputs stand in for its run directories: voting the file
    (alone, or beside a run directory) gives the same members and votes as voting the
    runs; a file's train_on_validation flags still forbid choosing by validation; a
    file of other images, or other test-time shifts, is refused."""
    runs = [tiny_runs[n][0] for n in "abc"]
    quiet = lambda *a: None
    ab = str(tmp_path / "ab.npz")
    direct = committee.vote_runs(runs, log=quiet, rule="mean_softmax")
    committee.vote_runs(runs[:2], log=quiet, rule="plurality", outputs_path=ab)
    for voters in ([ab, runs[2]], [runs[0], runs[1], runs[2]]):
        got = committee.vote_runs(voters, log=quiet, rule="mean_softmax")
        assert got["members"] == direct["members"]
        assert got["votes"] == direct["votes"]
    saved = committee.load_outputs(ab)
    with np.load(ab) as f:   # outputs and a fingerprint: no image or label of MNIST
        assert set(f.files) == set(committee._OUTPUT_KEYS) | set(committee._OPTIONAL_KEYS)
    assert list(saved["names"]) == runs[:2]
    assert list(saved["trained_on_validation"]) == [False, True]
    with pytest.raises(committee.CommitteeError, match="--vote_rule=plurality or mean"):
        committee.vote_runs([ab], log=quiet)
    with pytest.raises(committee.CommitteeError, match=r"shifts \[0\].*--vote_eval_shifts=1"):
        committee.vote_runs([ab], log=quiet, rule="plurality", eval_shifts=1)
    alone = committee.vote_runs([ab], log=quiet, rule="plurality", eval_shifts=0)
    assert alone["members"] == direct["members"][:2]
    with pytest.raises(committee.CommitteeError, match=r"rotate \[0.0\].*--vote_eval_rotate=5"):
        committee.vote_runs([ab], log=quiet, rule="plurality", eval_rotate=5.0)
    # Rotated and zoomed views: a saved file repeats the run directories' vote.
    abw = str(tmp_path / "abw.npz")
    warped = committee.vote_runs(runs[:2], log=quiet, rule="mean_softmax", eval_rotate=5.0,
                                 eval_zoom=0.1, outputs_path=abw)
    assert [m["eval_rotate"] for m in warped["members"]] == [5.0, 5.0]
    assert [m["eval_zoom"] for m in warped["members"]] == [0.1, 0.1]
    assert warped["eval_rotate"] == 5.0 and warped["eval_zoom"] == 0.1
    assert warped["members"] != direct["members"][:2]   # the views changed the outputs
    again = committee.vote_runs([abw], log=quiet, rule="mean_softmax", eval_zoom=0.1)
    assert again["members"] == warped["members"] and again["votes"] == warped["votes"]
    other = str(tmp_path / "other.npz")
    committee.save_outputs(other, _outputs(n_val=10_000, n_test=10_000))
    with pytest.raises(committee.CommitteeError, match="computed on other validation"):
        committee.vote_runs([runs[0], other], log=quiet, rule="plurality")
    for bad, msg in ((str(tmp_path / "none.npz"), "no such outputs file"),
                     (str(tmp_path / "x.json"), "must end in .npz"),
                     (str(tmp_path / "no" / "x.npz"), "create it first")):
        with pytest.raises(committee.CommitteeError, match=msg):
            if bad.endswith("none.npz"):
                committee.vote_runs([bad], log=quiet, rule="plurality")
            else:
                committee.vote_runs(runs, log=quiet, rule="plurality", outputs_path=bad)
    # From the command line: the file is written beside the vote's JSON.
    out, npz = tmp_path / "v.json", tmp_path / "v.npz"
    proc = run_py("--mode=vote", f"--vote_runs={ab},{runs[2]}", "--vote_rule=mean_softmax",
                  f"--vote_out={out}", f"--vote_save_outputs={npz}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["votes"] == direct["votes"]
    assert list(committee.load_outputs(str(npz))["names"]) == runs
    # A float16 archive of the same committee votes as its runs did, but for near ties
    # (these barely trained networks have many: a few of 10,000 images may move).
    half = tmp_path / "half.npz"
    proc = run_py("--mode=vote", f"--vote_runs={npz}", "--vote_rule=mean_softmax",
                  f"--vote_out={tmp_path / 'h.json'}", f"--vote_save_outputs={half}",
                  "--vote_save_precision=float16")
    assert proc.returncode == 0, proc.stderr
    with np.load(half) as f:
        assert f["validation_probabilities"].dtype == np.float16
    again = committee.vote_runs([str(half)], log=quiet, rule="mean_softmax")
    for kind, v in direct["votes"].items():
        for key in ("validation_accuracy", "test_accuracy"):
            assert abs(again["votes"][kind][key] - v[key]) <= 5e-4, (kind, key)
    with pytest.raises(committee.CommitteeError, match="--vote_save_precision must be"):
        committee.vote_runs(runs, log=quiet, rule="plurality", outputs_path=str(half),
                            outputs_precision="half")


def test_runs_of_one_network_share_one_compiled_predictor(tiny_config, fake_data):
    """members_probabilities makes one predictor per network and options: two configs
    of one network share it, and it gives each run's own outputs (against a predictor
    made afresh); another width, or other views, get their own."""
    import jax
    from mnist_cnn import networks, train
    c = tiny_config()
    one, same = networks.from_config(c), networks.from_config(tiny_config())
    wider = tiny_config()
    wider.layers[0].features += 1
    other = networks.from_config(wider)
    assert committee._predictor(one, 50, False) is committee._predictor(same, 50, False)
    assert committee._predictor(one, 50, False) is not committee._predictor(other, 50, False)
    assert committee._predictor(one, 50, False) is not committee._predictor(one, 50, False, 1)
    images = np.asarray(fake_data(20, seed=4)[0])
    for seed in (0, 1):
        params = networks.init_params(one, jax.random.PRNGKey(seed))
        got = committee.members_probabilities(one, params, False, [images], 50)[0][0]
        want = train.make_predict(one, 50)(params, images)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_fingerprint_names_exactly_the_images_and_labels():
    from mnist_cnn import data
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
                       rng.integers(0, 10, 6).astype(np.int32))
    same = data.Split(split.images.copy(), split.labels.copy())
    assert committee.fingerprint(split) == committee.fingerprint(same)
    pixel = split.images.copy()
    pixel[3, 10, 10] ^= 1
    label = split.labels.copy()
    label[5] = (label[5] + 1) % 10
    others = [data.Split(pixel, split.labels), data.Split(split.images, label),
              data.Split(split.images[:5], split.labels[:5]),
              data.Split(split.images.astype(np.float32), split.labels)]
    prints = {committee.fingerprint(s) for s in [split] + others}
    assert len(prints) == 5


@pytest.mark.slow
@pytest.mark.parametrize("how,text", [(dict(width_norm=14), "width-normalised to 14 pixels"),
                                      (dict(deskew=True), "deskewed")])
def test_preprocessed_run_votes_on_the_images_it_was_trained_on(tmp_path, small_mnist,
                                                              monkeypatch, how, text):
    """config.width_norm and config.deskew preprocess train, validation and test alike;
    the committee evaluates such a run on images preprocessed the same way (its vote is
    the run's own test accuracy), which differ from the raw ones the network would
    otherwise see. The run's errors.png says its images are the preprocessed ones."""
    from mnist_cnn import plots
    small_mnist(2000)
    notes = []
    monkeypatch.setattr(plots, "errors_grid", lambda *a, **k: notes.append(k.get("note")))
    s = _tiny_run(tmp_path / "w", **how, train_size=2000, num_epochs=2,
                  learning_rate=0.1, batch_size=20, plots=True)
    assert text in s["data_source"]
    assert notes and text in notes[0]
    voted = committee.vote_runs([str(tmp_path / "w")], log=lambda *a: None)
    assert voted["members"][0]["test_accuracy"] == pytest.approx(s["final_test_accuracy"])
    config, model, params, _ = committee.load_run(str(tmp_path / "w"))
    test = data.load().test
    accuracy = lambda images: np.mean(committee.member_probabilities(
        model, params, False, images, 500)[0].argmax(-1) == test.labels)
    own = (augment.width_normalize(test.images, 14) if "width_norm" in how
           else augment.deskew(test.images))
    assert accuracy(own) == pytest.approx(s["final_test_accuracy"])
    assert accuracy(test.images) != pytest.approx(s["final_test_accuracy"], abs=1e-3)


def test_committee_file_members_expand_to_run_py_commands(tmp_path):
    from mnist_cnn import committee_config as cc
    ms = cc.members("experiments/four_conv_elastic.py", ("layers[0].kernel=7",), (3, 4),
                    "out/k7_s{seed}.npz")
    assert [m.outputs for m in ms] == ["out/k7_s3.npz", "out/k7_s4.npz"]
    assert cc.member_argv(ms[1]) == ["--config=experiments/four_conv_elastic.py",
                                     "--config.layers[0].kernel=7", "--config.seed=4"]
    c = cc.member_config(ms[1])
    assert c.layers[0].kernel == 7 and c.seed == 4 and c.train_on_validation
    bad = cc.member("experiments/four_conv_elastic.py", ("layers[0].kernel=seven",))
    with pytest.raises(config_lib.ConfigError, match="committee member .*kernel=seven"):
        cc.member_config(bad)
    with pytest.raises(config_lib.ConfigError, match="no such experiment file"):
        cc.member_config(cc.member("experiments/nope.py"))
    with pytest.raises(config_lib.ConfigError, match="rule must be one of"):
        cc.validate(cc.committee(ms, rule="auto"))
    with pytest.raises(config_lib.ConfigError, match="eval_shifts"):
        cc.validate(cc.committee(ms, rule="mean_softmax", eval_shifts=40))
    with pytest.raises(config_lib.ConfigError, match="has no saved outputs at out/k7_s3"):
        cc.outputs_paths(cc.committee(ms, rule="mean_softmax"), root=str(tmp_path))


@pytest.mark.parametrize("name", ["allconv", "four_conv_and_allconv"])
def test_committee_files_members_build_the_configs_their_runs_recorded(name, training_fields,
                                                                       repo_root):
    """Each member's experiment + overrides + seed builds the config its network was
    trained with (results/*/<run>/config.json, written when it trained)."""
    import glob
    import importlib
    from mnist_cnn import committee_config as cc
    c = importlib.import_module(f"experiments.committees.{name}").get_config()
    cc.validate(c)
    for m in c.members:
        run_name = os.path.basename(m.outputs).removesuffix(".npz")
        recorded = glob.glob(os.path.join(repo_root, "results", "*", run_name,
                                          "config.json"))
        assert len(recorded) == 1, run_name
        with open(recorded[0]) as f:
            want = config_lib.with_defaults(json.load(f))
        assert training_fields(cc.member_config(m).to_dict()) == training_fields(want)
        assert want["seed"] == m.seed


def test_vote_of_a_committee_file_reproduces_its_recorded_vote(tmp_path, mnist_dir, run_py):
    """The 31-network committee votes from the archived float16 outputs with one
    command: 25 test errors, the very images its vote JSON recorded."""
    out = tmp_path / "vote.json"
    proc = run_py("--mode=vote", "--config=experiments/committees/four_conv_and_allconv.py",
                  f"--vote_out={out}")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    with open(os.path.join(os.path.dirname(__file__), "..", "results",
                           "2026-11-27-allconv-committee", "vote_S.json")) as f:
        want = json.load(f)
    assert got["chosen_vote"] == "mean_softmax" and got["size"] == 31
    for rule in ("mean_softmax", "plurality"):
        assert got["votes"][rule]["test_errors"] == want["votes"][rule]["test_errors"]
        assert got["votes"][rule]["test_wrong"] == want["votes"][rule]["test_wrong"]
    assert got["votes"]["mean_softmax"]["test_errors"] == 25


def test_committee_file_flags_it_fixes_are_refused(tmp_path, run_py, assert_user_error):
    for extra in ("--vote_rule=plurality", "--vote_runs=runs/a", "--vote_eval_shifts=0"):
        proc = run_py("--mode=vote", "--config=experiments/committees/allconv.py", extra,
                      f"--vote_out={tmp_path / 'v.json'}")
        assert_user_error(proc, extra.split("=")[0], "committee file fixes")
    proc = run_py("--config=experiments/committees/allconv.py", f"--workdir={tmp_path / 'w'}")
    assert_user_error(proc, "committee file", "--mode=vote")
    proc = run_py("--mode=vote", "--config=experiments/shallow.py", "--vote_runs=runs/a")
    assert_user_error(proc, "--mode=vote takes --vote_runs, or a committee file")
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "w").exists()


def test_saving_outputs_leaves_another_writers_temporary_file_alone(tmp_path):
    """Another writer's temporary file beside the output (the name a fixed-name writer
    would pick) is neither used nor removed: each save writes a file of its own."""
    path = tmp_path / "o.npz"
    theirs = tmp_path / "o.npz.tmp.npz"
    theirs.write_bytes(b"another writer's bytes")
    committee.save_outputs(str(path), _outputs())
    assert theirs.read_bytes() == b"another writer's bytes"
    assert list(committee.load_outputs(str(path))["names"]) == ["net0", "net1", "net2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "o.npz.tmp.npz"]
