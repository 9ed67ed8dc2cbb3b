"""A committee file trained and voted in one command (`run.py --mode=committee`).

    python run.py --mode=committee --config=experiments/committees/allconv_fresh.py \
        --workdir=runs/allconv_fresh

Every member whose saved outputs are not archived (the committee file's `outputs`)
trains in DIR/<member name>/ as an ordinary run (driver.run: a finished member is
skipped, a killed one resumes from its checkpoint); members identical but for
consecutive seeds train as one vmapped stack (config.num_members) unless one of them
already has a run directory of its own. Then the networks vote with the file's rule
and views (committee.vote_runs), and DIR gets:

- committee.json: the committee file's members, rule and views (a re-run must match);
- vote.json: every member's and both votes' accuracies, errors and wrong test images;
- outputs.npz: every network's validation and test softmax outputs (a later vote's input);
- summary.json: each member's and the committee's test accuracy and errors, wall time;
- errors.png: the test images the committee gets wrong (the chapter's figure).

Interrupt it anywhere and run the same command again: it continues.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from mnist_cnn import committee, committee_config, metrics_io
from mnist_cnn import config as config_lib

RECORD = "committee.json"


@dataclasses.dataclass(frozen=True)
class Job:
    """One run the committee trains: its directory, config and the members it holds."""
    name: str
    config: object
    members: tuple


def record(c) -> dict:
    """What makes a committee itself: its members' commands, rule and views."""
    return dict(members=[committee_config.member_argv(m) for m in c.members], rule=c.rule,
                eval_shifts=c.eval_shifts, eval_rotate=float(c.eval_rotate),
                eval_zoom=float(c.eval_zoom))


def check_workdir(workdir: str, rec: dict, overwrite: bool) -> None:
    """Writes DIR/committee.json, or checks that the one there is this committee."""
    path = os.path.join(workdir, RECORD)
    if os.path.exists(path) and not overwrite:
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as e:
            raise config_lib.ConfigError(f"{path} cannot be read ({e}); use a new "
                                         f"--workdir") from None
        if stored != rec:
            raise config_lib.ConfigError(
                f"{workdir} holds another committee (its {RECORD} differs: members, rule "
                f"or views); use a new --workdir, or --overwrite to start over")
        return
    os.makedirs(workdir, exist_ok=True)
    metrics_io.write_json_atomic(path, rec)


def _stackable(a, b) -> bool:
    """Members a, b ((index, member, config) each) train as one stack: the same config
    but the seed, and b's seed follows a's."""
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "seed"}
    return b[1].seed == a[1].seed + 1 and strip(a[2]) == strip(b[2])


def plan_jobs(c, workdir: str, stack: bool) -> list[Job]:
    """The runs to train, in the file's order: one per member, or with `stack` one per
    group of stackable members none of which has a run directory of its own yet.
    Members whose saved outputs are archived train nothing."""
    jobs, group = [], []

    def flush():
        if group:
            jobs.append(_job(list(group)))
            group.clear()
    for i, m in enumerate(c.members):
        if _archived(m):
            flush()
            continue
        entry = (i, m, committee_config.member_config(m))
        started = os.path.isdir(os.path.join(workdir, committee_config.member_name(i, m)))
        if not stack or started:
            flush()
            jobs.append(_job([entry]))
            continue
        if group and not _stackable(group[-1], entry):
            flush()
        group.append(entry)
    flush()
    return jobs


def _archived(m) -> bool:
    return bool(m.outputs) and os.path.isfile(os.path.join(committee_config.ROOT, m.outputs))


def _job(group) -> Job:
    """A member's run, or a stack of members as one run of config.num_members."""
    (i, m, mc), n = group[0], len(group)
    if n == 1:
        return Job(committee_config.member_name(i, m), mc, (m,))
    config = mc.copy_and_resolve_references()
    with config.unlocked():
        config.num_members = n
    name = committee_config.member_name(i, m) + f"-{group[-1][1].seed}"
    return Job(name, config_lib.validate(config), tuple(g[1] for g in group))


def train(jobs: list[Job], workdir: str, progress=None, log=print) -> None:
    """Trains (or resumes, or skips when finished) each job's run."""
    from mnist_cnn import driver
    for k, job in enumerate(jobs):
        log(f"member run {k + 1}/{len(jobs)}: {job.name} "
            f"({len(job.members)} network{'s' if len(job.members) > 1 else ''})")
        driver.run(job.config, os.path.join(workdir, job.name), progress=progress, log=log)


def voters(c, jobs: list[Job], workdir: str) -> list[str]:
    """Each network's source in the file's order: a job's run directory (once per
    job) or a member's archived outputs."""
    out = []
    by_member = {id(m): job for job in jobs for m in job.members}
    for m in c.members:
        job = by_member.get(id(m))
        path = (os.path.join(workdir, job.name) if job is not None
                else os.path.join(committee_config.ROOT, m.outputs))
        if path not in out:
            out.append(path)
    return out


def summary(c, result: dict, wall_time_s: float) -> dict:
    chosen = result["votes"][result["chosen_vote"]]
    return dict(
        name=c.name, rule=c.rule, size=result["size"], data_source=result["data_source"],
        test_accuracy=chosen["test_accuracy"], test_errors=chosen["test_errors"],
        validation_accuracy=chosen["validation_accuracy"], wall_time_s=round(wall_time_s, 2),
        members=[dict(name=os.path.basename(str(m["name"])), test_accuracy=m["test_accuracy"],
                      test_errors=len(m["test_wrong"]),
                      validation_accuracy=m["validation_accuracy"])
                 for m in result["members"]],
        votes={k: dict(test_accuracy=v["test_accuracy"], test_errors=v["test_errors"])
               for k, v in result["votes"].items()})


def errors_figure(c, outputs_path: str, path: str) -> None:
    """errors.png: the test images the committee's vote gets wrong (the data found as
    the first member's config finds it)."""
    from mnist_cnn import data, ensemble, plots
    first = committee_config.member_config(c.members[0])
    ds = data.load(first.data_source, first.data_dir or None, first.train_size,
                   download=first.download, dataset=first.dataset)
    saved = committee.load_outputs(outputs_path)
    predictions = np.asarray(ensemble.vote(c.rule, saved["test_probabilities"]))
    plots.errors_grid(ds.test.images, ds.test.labels, predictions, path,
                      title=f"committee of {len(saved['names'])} networks "
                            f"({c.rule.replace('_', ' ')} vote)")


def run(c, workdir: str, overwrite: bool = False, stack: bool = True, progress=None,
        log=print) -> dict:
    """Trains what is not finished, votes, writes the committee's files; the summary."""
    t0 = time.time()
    committee_config.validate(c)
    check_workdir(workdir, record(c), overwrite)
    jobs = plan_jobs(c, workdir, stack)
    train(jobs, workdir, progress, log)
    outputs = os.path.join(workdir, "outputs.npz")
    options = committee.VoteOptions(
        eval_shifts=c.eval_shifts, eval_rotate=c.eval_rotate, eval_zoom=c.eval_zoom,
        select="all", rule=c.rule, outputs_path=outputs)
    result = committee.vote_runs(voters(c, jobs, workdir), log=log, options=options)
    metrics_io.write_json_atomic(os.path.join(workdir, "vote.json"), result)
    out = summary(c, result, time.time() - t0)
    metrics_io.write_json_atomic(os.path.join(workdir, "summary.json"), out)
    errors_figure(c, outputs, os.path.join(workdir, "errors.png"))
    log(committee.markdown(result))
    return out
