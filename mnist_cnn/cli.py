"""What run.py does with its parsed flags: list experiments, or train one.

User errors (config, data, run directory) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import glob
import importlib
import os
import sys

from mnist_cnn import config as config_lib
from mnist_cnn import data, driver

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments")
USER_ERRORS = (config_lib.ConfigError, data.DataError, driver.RunError)


def experiment_names() -> list[str]:
    files = glob.glob(os.path.join(EXPERIMENTS_DIR, "*.py"))
    return sorted(os.path.basename(f)[:-3] for f in files if not f.endswith("__init__.py"))


def list_experiments() -> str:
    """A table: each experiment, the book's accuracy and ours."""
    rows = ["experiment                 book      measured"]
    for name in experiment_names():
        mod = importlib.import_module(f"experiments.{name}")
        book = getattr(mod, "BOOK_ACCURACY", None)
        ours = getattr(mod, "MEASURED", None)
        rows.append(f"{name:<26} {f'{book:.2f}%' if book else '-':<9} "
                    f"{f'{ours:.2f}%' if ours else 'not yet measured'}")
    return "\n".join(rows)


def main(flags) -> int:
    if flags.list:
        print(list_experiments())
        return 0
    if flags.config is None:
        sys.stderr.write("error: --config is required, e.g. --config=experiments/"
                         "dbl_conv_relu.py (python run.py --list shows them all)\n")
        return 2
    if not flags.workdir:
        sys.stderr.write("error: --workdir is required: the directory for this run's files\n")
        return 2
    try:
        driver.run(flags.config, flags.workdir, overwrite=flags.overwrite,
                   progress=flags.progress)
    except USER_ERRORS as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except driver.Interrupted as e:
        sys.stderr.write(f"{e}\n")
        return 128 + e.signum
    return 0
