"""benchmarks/gpu_plan.py: the pace estimate that decides whether a GPU run is stopped,
the plans (valid runs, votes over runs trained before them) and the vote stage."""

from benchmarks import gpu_plan


def test_epoch_seconds_ignores_a_single_slow_interval():
    done = [{"epoch_train_s": 2.5}] * 4
    # Epochs seen at 10 s, 14 s (a 4 s gap: a one-off), 16.7 s, 19.4 s.
    seen = [(1, 10.0), (2, 14.0), (3, 16.7), (4, 19.4)]
    assert abs(gpu_plan.epoch_seconds(seen, done) - 2.7) < 1e-9
    # Two intervals: their mean is the median of two.
    assert abs(gpu_plan.epoch_seconds(seen[:3], done[:3]) - 3.35) < 1e-9


def test_epoch_seconds_before_three_epochs_uses_the_training_time():
    done = [{"epoch_train_s": 2.0}, {"epoch_train_s": 3.0}]
    assert abs(gpu_plan.epoch_seconds([(1, 10.0), (2, 14.0)], done) - 3.45) < 1e-9
    assert abs(gpu_plan.epoch_seconds([(1, 10.0)], done[:1]) - 2.3) < 1e-9
    # Several epochs finished between two looks count as one interval of that many.
    seen = [(1, 0.0), (3, 6.0), (5, 12.0)]
    assert gpu_plan.epoch_seconds(seen, done) == 3.0


def test_every_plan_step_is_a_valid_run_and_votes_name_earlier_runs():
    from mnist_cnn import config as config_lib
    for plan, steps in gpu_plan.PLANS.items():
        names = [name for _, name, _ in steps]
        assert len(set(names)) == len(names), plan
        trained = []
        for kind, name, arg in steps:
            if kind == "train":
                exp, extra = arg
                c = config_lib.validate(gpu_plan.run_config(exp, extra))
                for flag in extra:   # each flag reached the config
                    field, _, value = flag.removeprefix("--config.").partition("=")
                    assert str(c[field]) == value, (plan, name, flag)
                assert gpu_plan.num_epochs(exp, extra) == c.num_epochs
                trained.append((name, c))
            elif kind == "vote":
                runs, rule = arg
                assert set(runs) <= {n for n, _ in trained}, (plan, name)
                voters = [c for n, c in trained if n in runs]
                assert rule or not any(c.train_on_validation for c in voters), (plan, name)


def test_full_plan_trains_each_preprocessing_with_seeds_of_its_own():
    from mnist_cnn import config as config_lib
    steps = [arg for kind, _, arg in gpu_plan.PLANS["full"] if kind == "train"]
    configs = [config_lib.validate(gpu_plan.run_config(exp, extra))
               for exp, extra in steps]
    # First the two all-convolutional ensembles (original and deskewed digits), then the
    # four-conv network's seven preprocessings.
    assert [c.layers[-2].kind == "conv_pool" for c in configs] == [True] * 2 + [False] * 7
    assert [(c.width_norm, c.deskew) for c in configs] == [(0, False), (0, True)] + [
        (0, False), (0, True), (18, False), (14, False), (16, False), (12, False),
        (20, False)]
    assert all(c.num_members == 5 and c.train_on_validation for c in configs)
    assert len(set(gpu_plan.PRE_RUNS)) == len(steps) - 2 == 7
    seeds = [int(extra[0].split("=")[1]) for _, extra in steps]
    assert min(seeds) > 74   # every seed of this plan is new: the CPU runs used 0-74
    members = 5
    spans = [set(range(s, s + members)) for s in seeds]
    assert all(not (a & b) for i, a in enumerate(spans) for b in spans[i + 1:])


def test_vote_stage_votes_only_when_every_run_finished(tmp_path):
    s = gpu_plan.Runner(str(tmp_path / "out"), 100, "", str(tmp_path / "runs"))
    calls = []
    s.run = lambda name, args, limit, watch=None: calls.append(args) or 0
    for run in ("a", "b"):
        (tmp_path / "runs" / run / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "summary.json").write_text("{}")
    assert gpu_plan.stage_vote(s, "v", ["a", "b"], "mean_softmax") is None
    assert calls == [] and "no finished run for b" in (tmp_path / "out" / "log.txt").read_text()
    (tmp_path / "runs" / "b" / "summary.json").write_text("{}")
    assert gpu_plan.stage_vote(s, "v", ["a", "b"], "mean_softmax") == 0
    assert calls and "--vote_rule=mean_softmax" in calls[0]
