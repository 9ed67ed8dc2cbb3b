"""The command line: the training flags, their parsing (every flag or config error one
line, exit code 2), and one call into mnist_cnn.cli. run.py and the mnist-cnn console
script start here.

    python run.py --config=experiments/dbl_conv_relu.py --workdir=runs/dbl_conv_relu
    python run.py --config=experiments/dbl_conv_relu.py --workdir=/tmp/quick \
        --config.num_epochs=1 --config.train_size=5000
    python run.py --list
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mnist_cnn import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. "
                                "experiments/dbl_conv_relu.py", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for this run's metrics, summary and figures.")
flags.DEFINE_bool("overwrite", False, "Start over in --workdir, deleting the run there "
                  "(config, metrics, checkpoints). Without it a run there is resumed.")
flags.DEFINE_bool("list", False, "List the experiments with the book's and our accuracy.")
flags.DEFINE_bool("progress", None, "Show a progress bar (default: when stderr is a tty).")
flags.DEFINE_enum("mode", "train", ["train", "benchmark", "vote", "committee"],
                  "train: train the experiment (with --sweep: a grid of runs); benchmark: "
                  "measure its network's speed; vote: finished runs, saved outputs or a "
                  "committee file vote on validation and test; committee: train a "
                  "committee file's unfinished members, then vote. Each mode's own "
                  "flags: --helpfull, under mnist_cnn.cli.sweep, .vote, .committee and "
                  ".benchmark.")


def _fail(message: str, code: int = 2):
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def parse_flags(argv):
    """absl's parse, with every flag or config error as one line and exit code 2."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg[len("--config="):].split(":")[0]
            if not os.path.isfile(path):
                _fail(f"no experiment file {path!r}; python run.py --list shows them "
                      f"(e.g. --config=experiments/dbl_conv_relu.py)")
    try:
        rest = FLAGS(argv)
        if FLAGS.config is not None:
            FLAGS.config.get("name")   # config_flags defers load errors to first use
        return rest
    except flags.Error as e:
        _fail(_first_line(e))
    except Exception as e:  # a config file that fails to load, or a bad override
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        missing = _missing_field(e)
        if missing:   # an override of a field the config does not have
            named = [o for o in overrides if re.search(rf"\b{re.escape(missing)}\b", o)]
            _fail(f"{', '.join(named or overrides)}: the config has no field {missing!r} "
                  f"there (docs/configuration.md lists the fields)")
        where = f" (overrides: {', '.join(overrides)})" if overrides else ""
        _fail(f"--config: {_first_line(e)}{where}")


def _missing_field(e):
    """The field name of a KeyError (ml_collections wraps it in an AttributeError), or
    None."""
    key = e if isinstance(e, KeyError) else (e.args[0] if e.args else None)
    if isinstance(key, KeyError) and key.args:
        return str(key.args[0]).strip("'\"")
    return None


def _first_line(e):
    """The line that says what is wrong: for a config file that raised, its exception
    (the last line of the traceback config_flags embeds, without the module path),
    else the first line."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if not lines:
        return type(e).__name__
    if any(l.startswith("Traceback") for l in lines):
        last = re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+: )", "", lines[-1])
        return f"{lines[0].split(':')[0]}: {last}"
    return lines[0]


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)   # jax/orbax/tfds INFO and WARNING chatter
    sys.exit(cli.main(FLAGS))


def run():
    """The console script (mnist-cnn) and run.py: --helpshort shows the training flags
    (these and mnist_cnn.cli.train's), --helpfull every mode's."""
    for module in (__name__, cli.train.__name__):
        for flag in FLAGS.get_key_flags_for_module(module):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=parse_flags)


