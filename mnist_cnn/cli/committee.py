r"""--mode=committee: a committee file's members trained (what is not finished) and
voted, in one command (mnist_cnn/committee_run.py, docs/ensembles.md).

    python run.py --mode=committee --config=experiments/committees/allconv_fresh.py \
        --workdir=runs/allconv_fresh
"""

from __future__ import annotations

from absl import flags

flags.DEFINE_bool("committee_stack", True, "committee: members identical but for "
                  "consecutive seeds train as one vmapped stack (config.num_members), "
                  "unless one of them already has a run directory of its own.")


def train_and_vote(flags) -> int:
    """Checks the committee file, trains its unfinished members, votes."""
    from mnist_cnn import committee_config, committee_run
    from mnist_cnn import config as config_lib
    if not committee_config.is_committee(flags.config):
        raise config_lib.ConfigError("--mode=committee takes a committee file as --config "
                                     "(experiments/committees/NAME.py)")
    if not flags.workdir:
        raise config_lib.ConfigError("--workdir is required: the directory for the "
                                     "committee's members and vote")
    committee_run.run(flags.config, flags.workdir, overwrite=flags.overwrite,
                      stack=flags.committee_stack, progress=flags.progress)
    return 0
