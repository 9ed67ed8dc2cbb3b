"""benchmarks/gpu_session.py's pace estimate: what decides whether a GPU run is stopped."""
from tests.scripts import load_benchmark

gpu_session = load_benchmark("gpu_session")


def test_epoch_seconds_ignores_a_single_slow_interval():
    done = [{"epoch_train_s": 2.5}] * 4
    # Epochs seen at 10 s, 14 s (a 4 s gap: a one-off), 16.7 s, 19.4 s.
    seen = [(1, 10.0), (2, 14.0), (3, 16.7), (4, 19.4)]
    assert abs(gpu_session.epoch_seconds(seen, done) - 2.7) < 1e-9
    # Two intervals: their mean is the median of two.
    assert abs(gpu_session.epoch_seconds(seen[:3], done[:3]) - 3.35) < 1e-9


def test_epoch_seconds_before_three_epochs_uses_the_training_time():
    done = [{"epoch_train_s": 2.0}, {"epoch_train_s": 3.0}]
    assert abs(gpu_session.epoch_seconds([(1, 10.0), (2, 14.0)], done) - 3.45) < 1e-9
    assert abs(gpu_session.epoch_seconds([(1, 10.0)], done[:1]) - 2.3) < 1e-9
    # Several epochs finished between two looks count as one interval of that many.
    seen = [(1, 0.0), (3, 6.0), (5, 12.0)]
    assert gpu_session.epoch_seconds(seen, done) == 3.0
