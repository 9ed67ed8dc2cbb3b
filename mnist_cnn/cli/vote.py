"""--mode=vote: networks of finished runs, saved outputs or a committee file voting on
the validation and test images (mnist_cnn/committee.py, docs/ensembles.md).

    python run.py --mode=vote --vote_runs=runs/a,runs/b --vote_rule=mean_softmax
    python run.py --mode=vote --config=experiments/committees/four_conv_and_allconv.py
"""

from __future__ import annotations

import sys

from absl import flags

# The choices repeat committee.SELECTIONS and RULES (importing it would load jax before
# the flags parse); tests/test_committee.py checks that they agree.
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

FIXED_BY_COMMITTEE_FILE = ("vote_runs", "vote_rule", "vote_select", "vote_eval_shifts",
                           "vote_eval_rotate", "vote_eval_zoom")


def vote_plan(flags):
    """(networks to vote, committee.VoteOptions) from --vote_runs and the vote flags, or
    from a committee file given as --config (its members' saved outputs, its rule and
    views, which the flags may not change)."""
    from mnist_cnn import committee, committee_config
    from mnist_cnn import config as config_lib
    own = lambda v: None if v < 0 else v   # negative: each run's own setting
    saving = dict(outputs_path=flags.vote_save_outputs,
                  outputs_precision=flags.vote_save_precision)
    if not committee_config.is_committee(flags.config):
        if flags.config is not None:
            raise config_lib.ConfigError("--mode=vote takes --vote_runs, or a committee "
                                         "file as --config (experiments/committees/)")
        return flags.vote_runs, committee.VoteOptions(
            eval_shifts=own(flags.vote_eval_shifts), eval_rotate=own(flags.vote_eval_rotate),
            eval_zoom=own(flags.vote_eval_zoom), select=flags.vote_select,
            rule=flags.vote_rule, **saving)
    fixed = [f"--{name}" for name in FIXED_BY_COMMITTEE_FILE if flags[name].present]
    if fixed:
        raise config_lib.ConfigError(f"{', '.join(fixed)}: the committee file fixes its "
                                     f"members, rule and views; drop the flag")
    c = committee_config.validate(flags.config)
    return committee_config.outputs_paths(c), committee.VoteOptions(
        eval_shifts=c.eval_shifts, eval_rotate=c.eval_rotate, eval_zoom=c.eval_zoom,
        select="all", rule=c.rule, **saving)


def vote(flags) -> int:
    """The vote's table on stdout, every figure in --vote_out (JSON)."""
    from mnist_cnn import committee, metrics_io
    from mnist_cnn import config as config_lib
    runs, options = vote_plan(flags)
    problem = metrics_io.output_path_problem(flags.vote_out)   # before any evaluation
    if problem:
        raise config_lib.ConfigError(f"--vote_out={flags.vote_out}: {problem}")
    result = committee.vote_runs(runs, log=lambda m: print(m, file=sys.stderr),
                                 options=options)
    print(committee.markdown(result))
    metrics_io.write_json_atomic(flags.vote_out, result)
    print(f"\nwrote {flags.vote_out}"
          + (f" and {flags.vote_save_outputs}" if flags.vote_save_outputs else ""))
    return 0
