"""A committee of finished runs: networks trained separately, voting together.

`--config.num_members` trains an ensemble of one architecture in one vmapped program.
A committee instead takes the newest checkpoint of each given run directory (any
experiments: different architectures, recipes, seeds; a stacked ensemble or num_runs
run gives all its members), evaluates every network on the validation and test sets,
and reports each member, the plurality vote (the book's) and the mean-softmax vote.
The vote reported as the committee's is the one with the higher *validation*
accuracy (plurality on a tie): the test set chooses nothing.

    python run.py --mode=vote --vote_runs=runs/modern_bn40,runs/modern_deep_bn40,...

`--vote_select=greedy` picks the committee from the given networks instead of taking
them all: forward ensemble selection (Caruana et al. 2004, "Ensemble selection from
libraries of models"), adding at each step the network that most lowers the mean-softmax
committee's *validation* cross-entropy, until none lowers it; the test set is not read
by the choice.

`--vote_rule=plurality|mean_softmax` fixes the vote in advance instead; a committee with
a run trained on the validation images (`config.train_on_validation`) must, and cannot
be picked greedily.

`--vote_save_outputs=FILE.npz` keeps what the vote read: every network's validation
and test softmax outputs, with its name, epoch, test-time shifts and whether it trained
on the validation images, and a SHA-256 fingerprint of the validation and test sets it
was scored on (the images and labels themselves are not written). A saved file can
stand in a later `--vote_runs` list for its networks (a committee that outlives its run
directories, or grows across machines: Caruana et al. keep such a "library" of model
predictions); it must have been computed on the same validation and test images.

The networks are evaluated as they are in their newest checkpoint (the end of the last
finished epoch), not at their best-validation epoch: a checkpoint of every epoch is
not kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import zipfile
import zlib

import ml_collections
import numpy as np

from mnist_cnn import augment, checkpoint, data, driver, ensemble, metrics_io, networks
from mnist_cnn import train
from mnist_cnn import config as config_lib


class CommitteeError(ValueError):
    """A run directory that cannot join a committee; the message names it."""


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise CommitteeError(f"{workdir} holds no run (no config.json); give the run "
                             f"directories that run.py --workdir wrote")
    try:
        with open(path) as f:
            saved = json.load(f)
        # Fields added since the run was trained take their defaults (the run trained
        # as they would have it: each new field's default is the behaviour before it).
        full = config_lib.with_defaults(saved)
        c = config_lib.base_config()
        c.update({k: v for k, v in full.items() if k != "layers"})
        c.layers = tuple(ml_collections.ConfigDict(layer) for layer in full["layers"])
        return config_lib.validate(c)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CommitteeError(f"{path} cannot be read as a run's config "
                             f"({checkpoint.reason(e)}): the file is damaged; vote the "
                             f"run's saved outputs instead, or train it again") from None


@contextlib.contextmanager
def _read_locked(workdir: str):
    """driver.read_locked: the run cannot start training while it is read; a run that
    is training is a CommitteeError (nothing in its directory is touched)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(driver.read_locked(workdir))
        except driver.RunBusy as e:
            raise CommitteeError(str(e)) from None
        yield


def load_run(workdir: str, config=None):
    """(config, model, params, epoch): the run's newest checkpoint (params: its weight
    average when it kept one, as the run evaluated); params stacked on a
    leading axis when the run trained several networks together; epoch: the epochs it
    finished, or "E + S steps" for a checkpoint S mini-batches into epoch E + 1.
    config: the run's load_config, when the caller has read it already. The run's
    directory is only read (checkpoint.reader), under a shared lock."""
    with _read_locked(workdir):
        config = load_config(workdir) if config is None else config
        model, state, done = _restore_run(workdir, config)
    return config, model, train.eval_params(state), done


def _restore_run(workdir, config):
    """(model, state, epoch) of the run's newest checkpoint, read-only."""
    if not checkpoint.exists(workdir):
        raise CommitteeError(f"{workdir} has no checkpoint to vote with (checkpoints/ "
                             f"is empty or missing)")
    model = networks.from_config(config)
    members = max(config.num_members, config.num_runs)
    # A template of the right shapes (the optimizer's state has a momentum trace or not).
    steps = train.steps_per_epoch(config_lib.num_train_images(config), config.batch_size)
    like = train.state_shapes(model, train.make_optimizer(config, steps), members,
                              config.ema_decay)
    try:
        state, meta = checkpoint.restore_latest(checkpoint.reader(workdir), like,
                                                check=_epoch_done)
    except checkpoint.RestoreError as e:
        raise CommitteeError(f"{workdir}: {e}: it is damaged or does not match its "
                             f"config.json; vote the run's saved outputs instead, or "
                             f"train it again") from None
    return model, state, _epoch_done(meta)


def _epoch_done(meta: dict):
    """A checkpoint record's epochs finished: E, or "E + S steps" S mini-batches into
    epoch E + 1."""
    epoch, steps = int(meta["epoch"]), int(meta.get("step_in_epoch") or 0)
    return epoch if not steps else f"{epoch} + {steps} steps"


OUTPUTS_FORMAT = 1
_OUTPUT_KEYS = ("format", "names", "epochs", "eval_shifts", "trained_on_validation",
                "validation_probabilities", "test_probabilities", "validation_sha256",
                "test_sha256")
# Keys a file written before they existed lacks: read as these (no such views).
_OPTIONAL_KEYS = dict(eval_rotate=0.0, eval_zoom=0.0)


def fingerprint(split) -> str:
    """SHA-256 of a data split's images and labels (shapes, dtypes and bytes): which
    images a saved output belongs to, without keeping them."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(split.images), np.ascontiguousarray(split.labels)):
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


SAVE_PRECISIONS = ("float32", "float16")


def save_outputs(path: str, outputs: dict, precision: str = "float32") -> None:
    """Writes a committee's evaluated networks (outputs: the _OUTPUT_KEYS but format;
    the *_sha256: fingerprint() of the splits) to path (.npz, compressed), atomically:
    a partial file never bears the name. precision "float16" stores the probabilities
    in a quarter of the space (an archive to commit; rounding moves each by < 2.5e-4,
    which can flip a vote on a near tie), read back as float32."""
    if precision not in SAVE_PRECISIONS:
        raise CommitteeError(f"outputs precision must be one of {SAVE_PRECISIONS}, "
                             f"got {precision!r}")
    prob = lambda a: np.asarray(a, np.float32).astype(precision)
    arrays = dict(format=np.int64(OUTPUTS_FORMAT),
                  names=np.asarray(outputs["names"], dtype=str),
                  epochs=np.asarray([str(e) for e in outputs["epochs"]], dtype=str),
                  eval_shifts=np.asarray(outputs["eval_shifts"], np.int64),
                  eval_rotate=np.asarray(outputs["eval_rotate"], np.float64),
                  eval_zoom=np.asarray(outputs["eval_zoom"], np.float64),
                  trained_on_validation=np.asarray(outputs["trained_on_validation"], bool),
                  validation_probabilities=prob(outputs["validation_probabilities"]),
                  test_probabilities=prob(outputs["test_probabilities"]),
                  validation_sha256=np.asarray(outputs["validation_sha256"], dtype=str),
                  test_sha256=np.asarray(outputs["test_sha256"], dtype=str))
    with metrics_io.temp_beside(path, ".tmp.npz") as tmp:   # a unique name: no collision
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    metrics_io.fsync_dir(os.path.dirname(path))


def load_outputs(path: str) -> dict:
    """A file save_outputs wrote, checked: its arrays as a dict. One that is not such a
    file, or is damaged (truncated, corrupt, arrays of the wrong kind or shape), is a
    CommitteeError."""
    got = _read_npz(path)
    missing = [k for k in _OUTPUT_KEYS if k not in got]
    if missing or _format(got) != OUTPUTS_FORMAT:
        raise CommitteeError(f"{path} is not a committee outputs file of format "
                             f"{OUTPUTS_FORMAT} (missing {', '.join(missing) or 'nothing'}, "
                             f"format {got.get('format')}): write it again with "
                             f"--vote_save_outputs")
    try:
        return _checked_outputs(path, got)
    except CommitteeError:
        raise
    except (TypeError, ValueError, IndexError) as e:
        raise CommitteeError(f"{path}: its arrays are not a committee's outputs "
                             f"({checkpoint.reason(e)}); the file is damaged: write it "
                             f"again with --vote_save_outputs") from None


def _read_npz(path: str) -> dict:
    """Every array of an .npz file; a file numpy cannot read whole is a CommitteeError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, zlib.error) as e:
        raise CommitteeError(f"{path} is not a committee outputs file "
                             f"(--vote_save_outputs writes them), or it is damaged "
                             f"({checkpoint.reason(e)})") from None


def _format(got: dict) -> int | None:
    try:
        return int(got["format"])
    except (TypeError, ValueError):
        return None


def _checked_outputs(path: str, got: dict) -> dict:
    """A saved file's arrays, the probabilities as float32, the optional keys filled
    in; CommitteeError when their shapes disagree."""
    m = len(got["names"])
    for key in ("validation_probabilities", "test_probabilities"):   # float16 archives
        got[key] = got[key].astype(np.float32, copy=False)
    for key, default in _OPTIONAL_KEYS.items():
        got.setdefault(key, np.full(m, default))
    if (got["validation_probabilities"].ndim != 3 or got["test_probabilities"].ndim != 3
            or got["validation_probabilities"].shape[0] != m
            or got["test_probabilities"].shape[0] != m
            or not len(got["epochs"]) == len(got["eval_shifts"]) == len(got["eval_rotate"])
            == len(got["eval_zoom"]) == len(got["trained_on_validation"]) == m):
        raise CommitteeError(f"{path}: its arrays disagree in shape (names {m}, "
                             f"validation {got['validation_probabilities'].shape}, test "
                             f"{got['test_probabilities'].shape}); the file is damaged")
    return got


def is_outputs_file(entry: str) -> bool:
    """A --vote_runs entry that names a saved outputs file, not a run directory."""
    return entry.endswith(".npz")


def member_probabilities(model, params, stacked: bool, images, eval_batch_size=200,
                         eval_shifts=0, eval_rotate=0.0, eval_zoom=0.0):
    """(members, N, 10) softmax outputs of one run's network(s), averaged over
    test-time shifts, rotations and zooms when any is > 0 (train.make_predict)."""
    return members_probabilities(model, params, stacked, [images], eval_batch_size,
                                 eval_shifts, eval_rotate, eval_zoom)[0]


def members_probabilities(model, params, stacked: bool, image_sets, eval_batch_size=200,
                          eval_shifts=0, eval_rotate=0.0, eval_zoom=0.0) -> list:
    """member_probabilities on each of image_sets, from one compiled predict (sets of
    one shape, validation and test, compile once; runs of one network and the same
    views share it)."""
    predict = _predictor(model, eval_batch_size, stacked, eval_shifts, eval_rotate,
                         eval_zoom)
    probs = [np.asarray(predict(params, images)) for images in image_sets]
    return probs if stacked else [p[None] for p in probs]


_PREDICTORS: dict = {}   # (repr(model), *options) -> jitted predict; the newest 16


def _predictor(model, *options):
    """train.make_predict(model, *options), made once per network and options: the runs
    of a committee that share a network trace and compile one predictor. The key is
    the model's repr, which names every attribute (Flax modules do not hash)."""
    key = (repr(model), *options)
    if key not in _PREDICTORS:
        if len(_PREDICTORS) >= 16:
            del _PREDICTORS[next(iter(_PREDICTORS))]
        _PREDICTORS[key] = train.make_predict(model, *options)
    return _PREDICTORS[key]


def _accuracy(pred, labels) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def wrong_images(pred, labels) -> list[int]:
    """Pure: the indices of the images whose prediction is not the label."""
    return np.flatnonzero(np.asarray(pred) != np.asarray(labels)).tolist()


def jaccard(a, b) -> float:
    """Pure: |a & b| / |a | b| of two sets of image indices (1.0 for two empty sets:
    they are the same)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_jaccard(sets_a, sets_b=None):
    """Pure: how much two networks' test errors overlap, on average: the mean Jaccard
    index over every pair of one set from sets_a and one from sets_b, or, with sets_b
    None, over every unordered pair within sets_a. None when there is no pair."""
    if sets_b is None:
        pairs = [(a, b) for i, a in enumerate(sets_a) for b in sets_a[i + 1:]]
    else:
        pairs = [(a, b) for a in sets_a for b in sets_b]
    return float(np.mean([jaccard(a, b) for a, b in pairs])) if pairs else None


def group_overlaps(errors: dict, group_of) -> dict:
    """Pure: the mean Jaccard overlap of two networks' test-error sets for every pair of
    groups, e.g. how a new block of networks errs against the old ones. errors: network
    name -> its wrong test images (a vote record's members' test_wrong); group_of: name
    -> group name. Returns {"A-B": overlap} for each group A and each group B from A on,
    in order of first appearance ("A-A": within A); a pair with no two networks is left
    out."""
    groups = {}
    for name, wrong in errors.items():
        groups.setdefault(group_of(name), []).append(wrong)
    names = list(groups)
    out = {}
    for i, a in enumerate(names):
        for b in names[i:]:
            v = mean_jaccard(groups[a], None if a == b else groups[b])
            if v is not None:
                out[f"{a}-{b}"] = v
    return out


def member_accuracies(probs_val, probs_test, val_labels, test_labels, names) -> list:
    """Pure: each network's own validation and test accuracy, its validation
    cross-entropy, and the test images it gets wrong (test_wrong)."""
    return [dict(name=n, validation_accuracy=_accuracy(pv.argmax(-1), val_labels),
                 test_accuracy=_accuracy(pt.argmax(-1), test_labels),
                 validation_nll=_nll(np.asarray(pv, np.float64), val_labels),
                 test_wrong=wrong_images(pt.argmax(-1), test_labels))
            for n, pv, pt in zip(names, probs_val, probs_test)]


def tally(probs_val, probs_test, val_labels, test_labels, names, rule="auto") -> dict:
    """Pure: every member's and both votes' accuracies, and the committee's vote: the
    one with the higher validation accuracy (plurality on a tie) for rule "auto", else
    the named one (fixed in advance). test_wrong_by[k]: how many test images exactly k
    of the members get wrong, and mean_error_jaccard: the mean Jaccard index of two
    members' test-error sets (how much the members' errors overlap; None for one
    member). Every member and vote lists the test images it gets wrong (test_wrong)."""
    out = dict(members=member_accuracies(probs_val, probs_test, val_labels, test_labels,
                                         names))
    votes = {}
    for kind in ensemble.VOTES:
        pred_test = np.asarray(ensemble.vote(kind, probs_test))
        votes[kind] = dict(validation_accuracy=_accuracy(ensemble.vote(kind, probs_val),
                                                         val_labels),
                           test_accuracy=_accuracy(pred_test, test_labels),
                           test_errors=int(np.sum(pred_test != np.asarray(test_labels))),
                           test_wrong=wrong_images(pred_test, test_labels))
    mean_val = np.mean(np.asarray(probs_val, np.float64), axis=0)
    votes["mean_softmax"]["validation_nll"] = _nll(mean_val, val_labels)
    chosen = rule if rule != "auto" else max(
        ensemble.VOTES, key=lambda k: (votes[k]["validation_accuracy"], k == "plurality"))
    wrong = np.sum(np.argmax(probs_test, -1) != np.asarray(test_labels)[None], axis=0)
    out["test_wrong_by"] = np.bincount(wrong, minlength=len(names) + 1).tolist()
    out["mean_error_jaccard"] = mean_jaccard([m["test_wrong"] for m in out["members"]])
    out.update(votes=votes, chosen_vote=chosen, vote_rule=rule, size=len(names),
               validation_accuracy=votes[chosen]["validation_accuracy"],
               test_accuracy=votes[chosen]["test_accuracy"])
    return out


SELECTIONS = ("all", "greedy")
RULES = ("auto",) + tuple(ensemble.VOTES)
# Each test-time view a vote may set for every network: (largest value, unit).
_VIEW_LIMITS = dict(eval_shifts=(config_lib.MAX_SHIFT, " pixels"),
                    eval_rotate=(config_lib.MAX_EVAL_ROTATE, " degrees"),
                    eval_zoom=(config_lib.MAX_EVAL_ZOOM, ""))


@dataclasses.dataclass(frozen=True)
class VoteOptions:
    """How vote_runs votes. eval_shifts: test-time shifts for every network
    (config.eval_shifts); None: each run's own (a saved file's: as saved); eval_rotate,
    eval_zoom: likewise for the rotated and zoomed views. select: "all" networks vote,
    or "greedy": the committee greedy_select picks on validation. rule: "auto" (the
    vote with the better validation accuracy) or a vote fixed in advance, which a
    committee with a run trained on the validation images (train_on_validation) needs.
    outputs_path: where to save every evaluated network's outputs (.npz), in
    outputs_precision (SAVE_PRECISIONS)."""
    eval_shifts: int | None = None
    eval_rotate: float | None = None
    eval_zoom: float | None = None
    select: str = "all"
    rule: str = "auto"
    outputs_path: str | None = None
    outputs_precision: str = "float32"

    def views(self) -> dict:
        """{eval_shifts, eval_rotate, eval_zoom: the value asked for, or None}."""
        return {key: getattr(self, key) for key in _VIEW_LIMITS}

    def check(self) -> VoteOptions:
        """These options, or CommitteeError naming the first bad one by its flag."""
        _check_choice("--vote_save_precision", self.outputs_precision, SAVE_PRECISIONS)
        _check_choice("--vote_select", self.select, SELECTIONS)
        _check_choice("--vote_rule", self.rule, RULES)
        for key, (top, unit) in _VIEW_LIMITS.items():
            value = getattr(self, key)
            if value is not None and not 0 <= value <= top:
                raise CommitteeError(f"--vote_{key} must be in [0, {top}]{unit} (or -1: "
                                     f"each run's own config.{key}), got {value}")
        if self.outputs_path is not None:
            _check_outputs_path(self.outputs_path)
        return self


def _check_choice(flag, value, choices):
    if value not in choices:
        raise CommitteeError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def _check_outputs_path(path):
    if not is_outputs_file(path):
        raise CommitteeError(f"--vote_save_outputs={path}: the file name must end in .npz")
    problem = metrics_io.output_path_problem(path)
    if problem:
        raise CommitteeError(f"--vote_save_outputs={path}: {problem}")


def _nll(mean_probs, labels) -> float:
    p = mean_probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def greedy_select(probs_val, val_labels) -> list[int]:
    """Pure: forward ensemble selection on validation only. probs_val: (M, N, C) member
    softmax outputs. Starts from no network; each step adds the unused network whose
    addition gives the mean-softmax committee the lowest validation cross-entropy (the
    earliest on a tie), and stops when that is no lower than before. Returns the chosen
    indices in the order they were added."""
    probs_val = np.asarray(probs_val, np.float64)
    chosen, total, best = [], np.zeros(probs_val.shape[1:]), np.inf
    while len(chosen) < len(probs_val):
        scores = [(_nll((total + probs_val[i]) / (len(chosen) + 1), val_labels), i)
                  for i in range(len(probs_val)) if i not in chosen]
        score, i = min(scores)
        if score >= best:
            break
        chosen.append(i)
        total, best = total + probs_val[i], score
    return chosen


def markdown(result: dict) -> str:
    lines = ["| member | epoch | validation | test |", "|---|---|---|---|"]
    for m in result["members"]:
        lines.append(f"| {m['name']} | {m.get('epoch', '')} | "
                     f"{100 * m['validation_accuracy']:.2f}% | {100 * m['test_accuracy']:.2f}% |")
    for kind, v in result["votes"].items():
        how = "by validation" if result.get("vote_rule", "auto") == "auto" else "in advance"
        mark = f" (chosen {how})" if kind == result["chosen_vote"] else ""
        lines.append(f"| **{kind} vote**{mark} | | {100 * v['validation_accuracy']:.2f}% | "
                     f"**{100 * v['test_accuracy']:.2f}%** ({v['test_errors']} errors) |")
    if "test_wrong_by" in result and result["size"] > 1:
        by = result["test_wrong_by"]
        lines.append("\ntest images wrong for k of the " f"{result['size']} networks: "
                     + ", ".join(f"k={k}: {n}" for k, n in enumerate(by) if k and n))
    if result.get("mean_error_jaccard") is not None:
        lines.append(f"mean Jaccard overlap of two networks' test-error sets: "
                     f"{result['mean_error_jaccard']:.2f}")
    return "\n".join(lines)


def _load_entries(workdirs):
    """Each --vote_runs entry as (entry, config or None, saved outputs or None), read
    and checked before any network is evaluated; the configs' and files' flags say
    which members trained on the validation images."""
    entries = []
    for w in workdirs:
        if is_outputs_file(w):
            if not os.path.isfile(w):
                raise CommitteeError(f"{w}: no such outputs file (--vote_save_outputs "
                                     f"writes them); give a run directory or a saved file")
            entries.append((w, None, load_outputs(w)))
        else:
            entries.append((w, load_config(w), None))
    return entries


def _trained_on_validation(entries) -> list:
    return [w for w, c, saved in entries
            if (c is not None and c.train_on_validation)
            or (saved is not None and bool(np.any(saved["trained_on_validation"])))]


def _same_images(w, saved, ds):
    for split in ("validation", "test"):
        if str(saved[f"{split}_sha256"]) != fingerprint(getattr(ds, split)):
            raise CommitteeError(f"{w} was computed on other {split} images than this "
                                 f"vote's ({ds.source}): vote it with the data it was "
                                 f"saved from")
        got, want = saved[f"{split}_probabilities"].shape[1], len(getattr(ds, split))
        if got != want:
            raise CommitteeError(f"{w} holds {split} outputs of {got} images for "
                                 f"{want}: the file is damaged; write it again with "
                                 f"--vote_save_outputs")


def vote_runs(workdirs, log=print, options: VoteOptions | None = None, **fields) -> dict:
    """Loads each run, evaluates its networks on the validation and test sets (found as
    the first run's config finds its data), tallies. An entry ending in .npz is a file
    --vote_save_outputs wrote: its networks vote with their saved outputs (checked to
    be of the same images). options: how to vote (VoteOptions; default: all networks,
    each with its own views, the vote chosen by validation); fields: VoteOptions
    fields set on top of it, e.g. rule="plurality". Run directories are only read,
    each under a shared lock (a run that is training is refused); an entry naming one
    already given, or a network whose outputs repeat another's, counts once, with a
    warning."""
    options = dataclasses.replace(options or VoteOptions(), **fields).check()
    if not workdirs:
        raise CommitteeError("--vote_runs is empty: give at least one run directory "
                             "(a committee of none has no vote)")
    workdirs = _distinct(workdirs, log)
    with contextlib.ExitStack() as held:
        for w in workdirs:
            if not is_outputs_file(w):
                held.enter_context(_read_locked(w))
        entries = _load_entries(workdirs)
        _check_entries(entries, options)
        ds = _load_data(entries)
        _check_same_data(entries, ds)
        nets = _drop_duplicates(_evaluate(entries, ds, options.views(), log), log)
    pv, pt = np.concatenate(nets.validation), np.concatenate(nets.test)
    keep = _select(pv, ds.validation.labels, nets.names, options.select, log)
    result = tally(pv[keep], pt[keep], ds.validation.labels, ds.test.labels,
                   [nets.names[i] for i in keep], options.rule)
    for m, i in zip(result["members"], keep):
        m["epoch"] = nets.epochs[i]
        m.update({key: values[i] for key, values in nets.views.items()})
    result.update(runs=list(workdirs), data_source=ds.source, select=options.select,
                  **options.views())
    if options.select == "greedy":   # every network's own accuracies, chosen or not
        result["candidates"] = member_accuracies(pv, pt, ds.validation.labels,
                                                 ds.test.labels, nets.names)
    if options.outputs_path is not None:
        save_outputs(options.outputs_path, nets.outputs(pv, pt, ds),
                     precision=options.outputs_precision)
        result["outputs_file"] = options.outputs_path
    return result


def _distinct(workdirs, log) -> list:
    """workdirs without the entries that name one given before them (the same real
    path: named twice, through a symlink, with a trailing slash), a warning for each."""
    seen, out = {}, []
    for w in workdirs:
        key = os.path.realpath(w)
        if key in seen:
            log(f"warning: {w} is {seen[key]}, named twice: counted once")
            continue
        seen[key] = w
        out.append(w)
    return out


# Two networks whose validation and test probabilities all agree within this are one
# network counted twice (a run beside its saved outputs, or two files holding it):
# float16 archives round each probability by at most 2**-12.
DUPLICATE_ATOL = 2.0 ** -11


def duplicate_of(probs_val, probs_test, atol: float = DUPLICATE_ATOL) -> list:
    """Pure: for each network (axis 0 of the (M, N, C) outputs), the index of the first
    earlier network whose validation and test outputs all agree with its own within
    `atol`, or None for a network seen first."""
    close = lambda a, b: a.shape == b.shape and float(np.max(np.abs(a - b))) <= atol
    out = []
    for i in range(len(probs_val)):
        out.append(next((j for j in range(i) if out[j] is None
                         and close(probs_val[i][:64], probs_val[j][:64])
                         and close(probs_val[i], probs_val[j])
                         and close(probs_test[i], probs_test[j])), None))
    return out


def _drop_duplicates(nets, log):
    """nets without the networks that repeat an earlier one (duplicate_of): each is
    counted once, with a warning naming both."""
    pv, pt = np.concatenate(nets.validation), np.concatenate(nets.test)
    first = duplicate_of(pv, pt)
    for i, j in enumerate(first):
        if j is not None:
            log(f"warning: {nets.names[i]} has the outputs of {nets.names[j]} (the same "
                f"network given twice): counted once")
    if all(j is None for j in first):
        return nets
    return nets.subset([i for i, j in enumerate(first) if j is None], pv, pt)


def _check_entries(entries, options: VoteOptions):
    """Refuses, before any network is evaluated, a choice by validation for a committee
    with a network trained on it, and views a saved outputs file cannot redo."""
    trained_on_val = _trained_on_validation(entries)
    if trained_on_val and options.select == "greedy":
        raise CommitteeError(f"{trained_on_val[0]} trained on the validation images "
                             f"(train_on_validation), so validation cannot pick the "
                             f"committee: use --vote_select=all")
    if trained_on_val and options.rule == "auto":
        raise CommitteeError(f"{trained_on_val[0]} trained on the validation images "
                             f"(train_on_validation), so validation cannot choose the "
                             f"vote: fix it with --vote_rule=plurality or mean_softmax")
    for w, _, saved in entries:
        for key, want in options.views().items():
            if saved is not None and want is not None and any(
                    float(v) != want for v in saved[key]):
                raise CommitteeError(f"{w} holds outputs with test-time {key} "
                                     f"{sorted(set(saved[key].tolist()))}, which "
                                     f"--vote_{key}={want} cannot redo: pass -1, or "
                                     f"vote the run directories instead")


def _load_data(entries):
    """The dataset the first run directory's config names (the defaults' for a vote of
    saved files only)."""
    first = next((c for _, c, _ in entries if c is not None), config_lib.base_config())
    return data.load(first.data_source, first.data_dir or None, first.train_size,
                     download=first.download, dataset=first.dataset)


def _recorded_data(workdir: str) -> dict | None:
    """The data_sha256 a run's summary.json records (None: no summary, or one written
    before runs recorded their data)."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            recorded = json.load(f).get("data_sha256")
    except (OSError, ValueError, AttributeError) as e:
        raise CommitteeError(f"{path} cannot be read ({e}); the file is damaged: "
                             f"restore it or train the run again") from None
    return recorded if isinstance(recorded, dict) else None


def _other_data(config, recorded: dict | None, now: dict) -> str | None:
    """Pure: how a run's data differs from the vote's (now: data.identity), or None:
    by the SHA-256s its summary records, else by its config.dataset (the same when the
    vote's files are that known dataset's)."""
    if recorded is not None:
        differ = [s for s, h in now["data_sha256"].items() if recorded.get(s) != h]
        return f"the SHA-256 of {', '.join(differ)} differs" if differ else None
    known = data.DATASETS.get(config.dataset)
    if config.dataset == now["dataset"] or (
            known is not None and known.idx_sha256 == now["data_sha256"]):
        return None
    return f"it names config.dataset={config.dataset}"


def _check_same_data(entries, ds) -> None:
    """Refuses, before any network is evaluated, a run trained on other data than the
    vote's (saved outputs are checked by their fingerprints, _same_images)."""
    now = data.identity(ds)
    for w, config, _ in entries if now else ():
        why = None if config is None else _other_data(config, _recorded_data(w), now)
        if why is not None:
            raise CommitteeError(f"{w} was trained on other data than this vote's "
                                 f"({data.describe(ds)}): {why}; vote runs trained on "
                                 f"the same data")


@dataclasses.dataclass
class _Networks:
    """Every network of a vote, in --vote_runs order: its name, epoch, whether it
    trained on the validation images, its test-time views, and its softmax outputs
    (one (members, N, 10) array per entry)."""
    names: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)
    trained_on_validation: list = dataclasses.field(default_factory=list)
    views: dict = dataclasses.field(default_factory=lambda: {k: [] for k in _VIEW_LIMITS})
    validation: list = dataclasses.field(default_factory=list)
    test: list = dataclasses.field(default_factory=list)

    def add(self, other: _Networks):
        for f in ("names", "epochs", "trained_on_validation", "validation", "test"):
            getattr(self, f).extend(getattr(other, f))
        for key, values in other.views.items():
            self.views[key].extend(values)

    def subset(self, keep: list, pv, pt) -> _Networks:
        """The networks at indices `keep`; pv, pt: the outputs concatenated."""
        pick = lambda values: [values[i] for i in keep]
        return _Networks(names=pick(self.names), epochs=pick(self.epochs),
                         trained_on_validation=pick(self.trained_on_validation),
                         views={k: pick(v) for k, v in self.views.items()},
                         validation=[pv[keep]], test=[pt[keep]])

    def outputs(self, pv, pt, ds) -> dict:
        """What save_outputs writes, pv and pt: the outputs concatenated."""
        return dict(names=self.names, epochs=self.epochs, **self.views,
                    trained_on_validation=self.trained_on_validation,
                    validation_probabilities=pv, test_probabilities=pt,
                    validation_sha256=fingerprint(ds.validation),
                    test_sha256=fingerprint(ds.test))


def _evaluate(entries, ds, views: dict, log) -> _Networks:
    """Every entry's networks: a saved file's as saved, a run's evaluated with the
    views asked for (None: its own) on the images as it was trained (width_norm,
    deskew), each preprocessing done once."""
    @functools.cache
    def inputs(*how):
        return (augment.preprocess(ds.validation.images, *how),
                augment.preprocess(ds.test.images, *how))

    nets = _Networks()
    for workdir, config, saved in entries:
        if saved is not None:
            nets.add(_saved_networks(workdir, saved, ds, log))
        else:
            nets.add(_run_networks(workdir, config, views, inputs, log))
    return nets


def _saved_networks(workdir, saved, ds, log) -> _Networks:
    _same_images(workdir, saved, ds)
    log(f"{workdir}: {len(saved['names'])} network(s) from saved outputs")
    return _Networks(
        names=[str(n) for n in saved["names"]],
        epochs=[int(e) if str(e).isdigit() else str(e) for e in saved["epochs"]],
        trained_on_validation=[bool(t) for t in saved["trained_on_validation"]],
        views={key: saved[key].tolist() for key in _VIEW_LIMITS},
        validation=[saved["validation_probabilities"]], test=[saved["test_probabilities"]])


def _run_networks(workdir, config, views: dict, inputs, log) -> _Networks:
    config, model, params, epoch = load_run(workdir, config)
    stacked = max(config.num_members, config.num_runs) > 1
    own = {key: config[key] if want is None else want for key, want in views.items()}
    v, t = members_probabilities(model, params, stacked,
                                 inputs(config.width_norm, config.deskew),
                                 config.eval_batch_size, **own)
    n = len(v)
    n_views = train.num_views(own["eval_shifts"], own["eval_rotate"], own["eval_zoom"])
    log(f"{workdir}: {n} network(s) at epoch {epoch}"
        + (f", {n_views} test-time views" if n_views > 1 else ""))
    return _Networks(
        names=[f"{workdir}[{i}]" if stacked else workdir for i in range(n)],
        epochs=[epoch] * n, trained_on_validation=[bool(config.train_on_validation)] * n,
        views={key: [value] * n for key, value in own.items()}, validation=[v], test=[t])


def _select(pv, val_labels, names, select: str, log) -> list[int]:
    """The indices of the networks that vote: all, or greedy_select's on validation."""
    if select != "greedy":
        return list(range(len(names)))
    keep = greedy_select(pv, val_labels)
    log(f"greedy selection on validation: {len(keep)} of {len(names)} networks: "
        + ", ".join(names[i] for i in keep))
    return keep
