"""Entry point: flags in, one call into mnist_cnn.driver.

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

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. "
                                "experiments/dbl_conv_relu.py", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for this run's metrics, summary and figures.")
flags.DEFINE_bool("overwrite", False, "Start over in --workdir, deleting the run there "
                  "(config, metrics, checkpoints). Without it a run there is resumed.")
flags.DEFINE_bool("list", False, "List the experiments with the book's and our accuracy.")
flags.DEFINE_bool("progress", None, "Show a progress bar (default: when stderr is a tty).")
flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: sweep a config field (repeat "
                          "for a grid); each point is a full run in a subdirectory of "
                          "--workdir.")
flags.DEFINE_bool("sweep_vmap", True, "Train a sweep's points together as one vmapped "
                  "program when only seed, learning_rate, l2, momentum and "
                  "layers[i].dropout vary.")
flags.DEFINE_string("sweep_shard", None, "i/N: run only the points with index % N == i.")
flags.DEFINE_bool("sweep_collect", False, "Build sweep.csv/.md/.png in --workdir from the "
                  "points every shard finished, without training.")
flags.DEFINE_enum("mode", "train", ["train", "benchmark", "vote"],
                  "train: train the experiment; benchmark: measure its network's speed "
                  "(see mnist_cnn/bench.py); vote: the networks of finished runs "
                  "(--vote_runs) vote on validation and test (mnist_cnn/committee.py).")
# The vote choices repeat committee.SELECTIONS and RULES (importing it would load jax
# before the flags parse); tests/test_committee.py checks that they agree.
flags.DEFINE_list("vote_runs", [], "vote: run directories whose newest checkpoints vote, "
                  "or .npz files --vote_save_outputs wrote (their networks' saved outputs).")
flags.DEFINE_string("vote_save_outputs", None, "vote: also save every network's "
                    "validation and test softmax outputs to this .npz file, which a later "
                    "--vote_runs can name in place of the run directories.")
flags.DEFINE_enum("vote_save_precision", "float32", ["float32", "float16"], "vote: the "
                  "precision --vote_save_outputs stores the probabilities in; float16 "
                  "files are a quarter of the size (archives to commit), read as float32.")
flags.DEFINE_string("vote_out", "vote.json", "vote: JSON output path.")
flags.DEFINE_integer("vote_eval_shifts", -1, "vote: test-time shifts for every network "
                     "(config.eval_shifts: 4k+1 views); -1: each run's own.")
flags.DEFINE_float("vote_eval_rotate", -1, "vote: test-time views rotated by +-D degrees for "
                   "every network (config.eval_rotate; 0: none); -1: each run's own.")
flags.DEFINE_float("vote_eval_zoom", -1, "vote: test-time views zoomed by 1 -+ Z for every "
                   "network (config.eval_zoom; 0: none); -1: each run's own.")
flags.DEFINE_enum("vote_select", "all", ["all", "greedy"], "vote: all the networks "
                  "vote, or greedy: forward selection of the committee by validation "
                  "cross-entropy (mnist_cnn/committee.py).")
flags.DEFINE_enum("vote_rule", "auto", ["auto", "plurality", "mean_softmax"], "vote: the "
                  "committee's vote; auto: the one with the better validation accuracy. "
                  "Fix it for runs trained on the validation images.")
flags.DEFINE_list("batch_sizes", ["10", "128"], "benchmark: mini-batch sizes.")
flags.DEFINE_list("conv_impls", ["patches", "xla"], "benchmark: conv implementations.")
flags.DEFINE_list("dtypes", ["float32"], "benchmark: float32 and/or bfloat16.")
flags.DEFINE_list("device_counts", ["1"], "benchmark: device counts (pmap when > 1).")
flags.DEFINE_list("micro_batches", ["0"], "benchmark: config.micro_batch values (0: auto, "
                  "N: gradient passes of N images, >= the batch: whole).")
flags.DEFINE_integer("bench_images", 10_000, "benchmark: training images per timed call.")
flags.DEFINE_integer("repeats", 3, "benchmark: timed repetitions after one warm-up.")
flags.DEFINE_float("peak_tflops", None, "benchmark: the device's peak TFLOP/s, for the "
                   "fraction of peak (default: a table of known accelerators).")
flags.DEFINE_string("benchmark_out", "benchmark.json", "benchmark: JSON output path.")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "host:port of process 0, for multi-process training with "
                    "jax.distributed (default: $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None,
                     "Processes in a multi-process run (default: $JAX_NUM_PROCESSES or 1).")
flags.DEFINE_integer("process_id", None,
                     "This process's index, 0..num_processes-1 (default: $JAX_PROCESS_ID "
                     "or 0). Only process 0 writes the run directory.")
flags.DEFINE_float("distributed_timeout", 120.0, "Seconds to wait for every process to "
                   "reach the coordinator before giving up with an error.")


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
    from mnist_cnn import cli
    sys.exit(cli.main(FLAGS))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
