"""Committee files: a committee's members, vote rule and test-time views, fixed in a file.

A committee file (experiments/committees/NAME.py) is an ml_collections config like an
experiment's, built from `committee` and `members`:

    def get_config():
        return committee(rule="mean_softmax", eval_shifts=1, members=(
            *members("experiments/allconv.py", seeds=(71, 72),
                     outputs="results/outputs/allconv_s{seed}.npz"),
            *members("experiments/allconv.py", ("deskew=True",), seeds=(73, 74)),
        ))

Each member is an experiment config, `--config.FIELD=VALUE` overrides and a seed: the
command that trains it. `outputs`, where given, is the member's saved validation and
test outputs (`--vote_save_outputs`), which `--mode=vote --config=FILE` votes from.
"""

from __future__ import annotations

import os
import re

import ml_collections
from absl import flags
from ml_collections import config_flags

from mnist_cnn import config as config_lib
from mnist_cnn import ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = tuple(ensemble.VOTES)


def member(config: str, overrides=(), seed: int = 0, outputs: str = ""):
    """One network: experiment config path (relative to the repository), overrides as
    'FIELD=VALUE' strings (as after --config.), its seed, its saved outputs or ''."""
    return ml_collections.ConfigDict(dict(config=config, overrides=tuple(overrides),
                                          seed=seed, outputs=outputs))


def members(config: str, overrides=(), seeds=(0,), outputs: str = ""):
    """One member per seed; '{seed}' in outputs stands for the member's seed."""
    return tuple(member(config, overrides, s, outputs.format(seed=s)) for s in seeds)


def committee(members, rule: str, eval_shifts: int = 0, eval_rotate: float = 0.0,
              eval_zoom: float = 0.0, name: str = ""):
    """A committee config: its members, the vote fixed in advance (plurality or
    mean_softmax) and the test-time views every member is evaluated with."""
    return ml_collections.ConfigDict(dict(
        kind="committee", name=name, members=tuple(members), rule=rule,
        eval_shifts=eval_shifts, eval_rotate=eval_rotate, eval_zoom=eval_zoom))


is_committee = config_lib.is_committee   # in config.py: a training run asks it too


def member_argv(m) -> list[str]:
    """The member's run.py flags: --config=..., each override, the seed."""
    return ([f"--config={m.config}"] + [f"--config.{o}" for o in m.overrides]
            + [f"--config.seed={m.seed}"])


def member_name(index: int, m) -> str:
    """The member's run directory name inside a committee's workdir, e.g.
    '02_allconv_deskew=True_s3003': its position, experiment, overrides and seed."""
    stem = os.path.basename(m.config.partition(":")[0]).removesuffix(".py")
    variant = m.config.partition(":")[2]
    parts = [f"{index:02d}", stem] + ([variant] if variant else []) + list(m.overrides)
    name = "_".join(parts) + f"_s{m.seed}"
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "", name.replace("[", "").replace("]", ""))[:150]


def member_config(m, root: str = ROOT):
    """The member's experiment config with its overrides and seed, as run.py builds it
    from member_argv, validated; a ConfigError names the member."""
    path, _, variant = m.config.partition(":")
    if not os.path.isfile(os.path.join(root, path)):
        raise config_lib.ConfigError(f"committee member {m.config}: no such experiment "
                                     f"file")
    argv = member_argv(m)
    argv[0] = f"--config={os.path.join(root, path)}" + (f":{variant}" if variant else "")
    try:
        return config_lib.validate(parse_config_flags(argv))
    except (flags.Error, ValueError, AttributeError, KeyError) as e:
        raise config_lib.ConfigError(f"committee member {' '.join(member_argv(m))}: "
                                     f"{str(e).splitlines()[0]}") from None


def parse_config_flags(argv: list[str]):
    """The config that run.py builds from --config=FILE[:variant] and --config.FIELD=V
    flags (ml_collections' own parsing, on a FlagValues of its own)."""
    argv = ["run.py"] + list(argv)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def validate(c, root: str = ROOT):
    """Checks the committee's rule, views and every member's config; returns c."""
    if c.rule not in RULES:
        raise config_lib.ConfigError(f"committee rule must be one of {', '.join(RULES)} "
                                     f"(fixed in advance), got {c.rule!r}")
    if not c.members:
        raise config_lib.ConfigError("a committee needs at least one member")
    checks = config_lib.base_config()
    checks.eval_shifts, checks.eval_rotate, checks.eval_zoom = (
        c.eval_shifts, c.eval_rotate, c.eval_zoom)
    checks.layers = (config_lib.softmax(10),)
    config_lib.validate(checks)   # the views' ranges, as for one network
    for m in c.members:
        member_config(m, root)
    return c


def outputs_paths(c, root: str = ROOT) -> list[str]:
    """Every member's saved outputs file; a ConfigError names a member without one."""
    paths = []
    for m in c.members:
        path = os.path.join(root, m.outputs) if m.outputs else ""
        if not path or not os.path.isfile(path):
            raise config_lib.ConfigError(
                f"committee member {' '.join(member_argv(m))} has no saved outputs"
                + (f" at {m.outputs}" if m.outputs else "") + ": train it and vote its "
                "run directory with --mode=vote --vote_runs")
        paths.append(path)
    return paths
