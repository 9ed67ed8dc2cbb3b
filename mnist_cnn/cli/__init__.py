"""What run.py does with its parsed flags, one module per mode, each defining its flags:

- train.py: train the experiment (and its multi-process flags);
- sweep.py: --sweep grids, shards and collection;
- vote.py: --mode=vote, committees of finished runs, saved outputs or a committee file;
- committee.py: --mode=committee, a committee file trained and voted in one command;
- benchmark.py: --mode=benchmark.

The flags are defined at import, cheaply (absl only); each mode imports the modules it
runs when it runs. User errors (config, data, run directory) become one line on stderr
and exit code 2.
"""

from __future__ import annotations

import sys

from mnist_cnn.cli import benchmark, committee, sweep, train, vote


def list_experiments() -> str:
    """Every experiment and committee file with the book's and the measured accuracy
    (results/results.csv)."""
    from mnist_cnn import report
    return report.list_text(report.load(), report.experiment_files())


def user_errors() -> tuple:
    from mnist_cnn import committee, data, driver
    from mnist_cnn import config as config_lib
    return (config_lib.ConfigError, data.DataError, driver.RunError,
            committee.CommitteeError)


def exit_code(fn, *args) -> int:
    """Runs fn: user errors become one `error:` line and status 2, a signal 128+signum."""
    from mnist_cnn import driver
    try:
        return fn(*args)
    except user_errors() as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except driver.Interrupted as e:
        sys.stderr.write(f"{e}\n")
        return 128 + e.signum


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 2


def main(flags) -> int:
    """Dispatches on --list, --mode and the sweep flags."""
    from mnist_cnn import config as config_lib
    if flags.list:
        print(list_experiments())
        return 0
    if flags.mode == "vote":
        return exit_code(vote.vote, flags)
    if flags.mode == "committee":
        return exit_code(committee.train_and_vote, flags)
    if flags.config is None:
        return _fail("--config is required, e.g. --config=experiments/dbl_conv_relu.py "
                     "(python run.py --list shows them all)")
    if config_lib.is_committee(flags.config):
        return _fail("--config names a committee file: train and vote it with "
                     "--mode=committee, or vote its saved outputs with --mode=vote")
    if flags.mode == "benchmark":
        return benchmark.benchmark(flags)
    if not flags.workdir:
        return _fail("--workdir is required: the directory for this run's files")
    if flags.sweep or flags.sweep_collect or flags.sweep_shard:
        return exit_code(sweep.run_sweep, flags)
    return exit_code(train.train_one, flags)
