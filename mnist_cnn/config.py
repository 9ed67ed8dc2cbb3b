"""Shared config pieces for experiments/*.py and the validation every run goes through.

A network is `config.layers`: a tuple of ConfigDicts, each one layer, overridable from
the command line (`--config.layers[2].features=200`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

from mnist_cnn import layers as L

LAYER_KINDS = ("conv_pool", "fc", "softmax")
# config.dataset: the known datasets (mnist_cnn/data.py's DATASETS) and any directory.
DATASETS = ("mnist", "fashion_mnist", "kmnist", "custom")
INITS = ("network3", "modern")


class ConfigError(ValueError):
    """A config value the user can fix; the message names the field."""


def conv_pool(features, kernel=5, stride=1, pool="max", pool_window=2, pool_stride=0,
              activation="sigmoid", padding="VALID", batch_norm=False):
    """network3's ConvPoolLayer: act(pool(conv(x)) + b). pool_stride 0 = the window.
    batch_norm: normalise pool(conv(x)) per feature map first (networks.ConvPool)."""
    return ml_collections.ConfigDict(dict(
        kind="conv_pool", features=features, kernel=kernel, stride=stride, padding=padding,
        pool=pool, pool_window=pool_window, pool_stride=pool_stride, activation=activation,
        batch_norm=batch_norm))


def fc(features, activation="sigmoid", dropout=0.0):
    """network3's FullyConnectedLayer; dropout acts on the layer's inputs."""
    return ml_collections.ConfigDict(dict(
        kind="fc", features=features, activation=activation, dropout=dropout))


def softmax(features=10, dropout=0.0):
    """network3's SoftmaxLayer (zero-initialised); dropout acts on its inputs."""
    return ml_collections.ConfigDict(dict(kind="softmax", features=features, dropout=dropout))


def parse_variant(arg, renamed=None, **defaults):
    """'n=300,p=0.5' -> dict, each value cast to its default's type; for experiment
    variants such as --config=experiments/expanded_data.py:n=300. Variants change a
    network's structure; renamed maps a key that only set config fields to the flags
    that set them ('--config.augment_rotate={v}'), for the error to suggest."""
    out = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if key in (renamed or {}):
            raise ConfigError(f"variant {key}= only sets config fields: write "
                              f"{renamed[key].format(v=value or 'V')} instead")
        if not sep or key not in defaults:
            raise ConfigError(f"bad variant {part!r}; this experiment takes "
                              f"{', '.join(f'{k}=' for k in defaults)}")
        try:
            out[key] = type(defaults[key])(value)
        except ValueError:
            raise ConfigError(f"variant {key} must be a {type(defaults[key]).__name__}, "
                              f"got {value!r}") from None
    return out


def layer_defaults(kind: str) -> dict:
    """Every field of a layer of this kind at its constructor's default ({} for an unknown
    kind): what a field added since a run was saved stands for in that run."""
    make = dict(conv_pool=conv_pool, fc=fc, softmax=softmax).get(kind)
    return make(1).to_dict() if make else {}


def with_defaults(saved: dict) -> dict:
    """A saved config (config.json) with every field added since it was written filled in
    at its default, the top level from base_config and each layer from its kind's
    constructor: each new field's default is the behaviour before it existed."""
    out = {**base_config().to_dict(), **saved}
    out["layers"] = [{**layer_defaults(layer.get("kind")), **layer}
                     for layer in saved.get("layers", [])]
    return out


def base_config():
    """Fields every experiment has, at network3's faithful settings; the groups below
    add them in the order docs/configuration.md lists them."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.layers = ()
    for add_fields in (_optimisation_fields, _data_fields, _augmentation_fields,
                       _ensemble_fields, _computation_fields, _evaluation_fields,
                       _run_fields):
        add_fields(c)
    return c


def _optimisation_fields(c):
    c.num_epochs = 60
    c.batch_size = 10
    c.learning_rate = 0.1
    c.l2 = 0.0                  # the book's lambda, in network3's scaling
    c.momentum = 0.0
    c.nesterov = False
    c.optimizer = "sgd"         # sgd (network3's; momentum, nesterov) | adam
    c.adam_b1 = 0.9             # adam's decay of the gradient mean (its momentum)
    c.adam_b2 = 0.999           # ... and of the squared gradient
    c.schedule = "constant"     # constant | cosine | onecycle
    c.warmup_epochs = 0.0       # for onecycle
    c.ema_decay = 0.0           # > 0: also keep an exponential moving average of the
                                # weights, updated every step, and evaluate it (0: off)
    c.seed = 0


def _data_fields(c):
    c.train_size = 50_000       # first N of the book's 50,000 training images
    c.train_on_validation = False  # True: also train on the 10,000 validation images
                                # (60,000 with the default train_size); validation then
                                # selects nothing: the reported epoch is the last one
    c.dataset = "mnist"         # mnist | fashion_mnist | kmnist | custom (any
                                # directory of the four IDX files, in data_dir)
    c.data_dir = ""             # "" -> $MNIST_DATA_DIR (mnist), then the cache directory
    c.data_source = "auto"      # auto | idx | tfds
    c.download = True           # fetch into the cache when nothing is found
    c.shuffle = False           # network3 visits mini-batches in the same order each epoch


def _augmentation_fields(c):
    c.width_norm = 0            # > 0: every image's digit bounding box stretched to this
                                # many pixels wide, train, validation and test alike
                                # (Ciresan et al. 2012's committee preprocessing; 0: off)
    c.deskew = False            # True: every image deskewed (its slant sheared upright),
                                # train, validation and test alike, before width_norm
    c.expand_data = False       # the book's 5x expansion (each image + four 1-pixel shifts)
    c.augment_shift = 0         # on-the-fly random shifts of up to k pixels (0: off)
    c.augment_rotate = 0.0      # on-the-fly random rotations of up to this many degrees
    c.augment_scale = 0.0       # on-the-fly random zoom by a factor in [1 - s, 1 + s]
    c.augment_elastic = 0.0     # on-the-fly elastic distortion (Simard et al. 2003): the
                                # displacement field's scale alpha in pixels (0: off)
    c.augment_elastic_sigma = 4.0  # its Gaussian smoothing, std in pixels


def _ensemble_fields(c):
    c.num_members = 1           # >1: an ensemble trained together (vmapped), voting
    c.vote = "plurality"        # plurality (the book) | mean_softmax
    c.num_runs = 1              # >1: independent runs (vmapped); the best validation is kept


def _computation_fields(c):
    c.init = "network3"         # network3 | modern (He / LeCun normal, zero biases)
    c.dropout_mode = "network3"  # network3 (no rescale; weights x (1-p) at eval) | inverted
    c.conv_impl = "auto"        # auto | patches | xla
    c.parallel = "auto"         # auto | none | pmap | sharding (docs/devices.md)
    c.num_devices = 0           # local devices to use; 0: all
    c.dtype = "float32"
    c.grad = "autodiff"         # autodiff (jax.grad) | manual (mnist_cnn/backprop.py)
    c.micro_batch = 0           # gradient pass size: 0 auto (CPU: slices of >= 64), N
                                # slices of N, >= batch_size the whole (train.micro_batch_size)


def _evaluation_fields(c):
    c.bn_calibration_images = 10_000  # batch-norm layers: population moments from the
                                      # first N training images after each epoch
    c.eval_batch_size = 200     # fastest measured on a 2-core CPU (100-500 are close)
    c.eval_shifts = 0           # test-time augmentation: evaluation averages the softmax
                                # over each image and its shifts by 1..k pixels up, down,
                                # left and right (4k + 1 views); 0: the image alone
    c.eval_rotate = 0.0         # ... and over each image rotated by +-D degrees (2 more
                                # views; 0: none), bilinear as augment_rotate
    c.eval_zoom = 0.0           # ... and zoomed by 1 -+ Z (2 more views; 0: none)
    c.eval_every = 1            # evaluate validation and test after every N-th epoch and
                                # the last; the epochs between record training cost only
                                # (and the best-validation choice sees evaluated epochs)


def _run_fields(c):
    c.chunk_steps = 500         # mini-batches per jitted scan call (progress bar granularity)
    c.checkpoint_every_steps = 0  # also checkpoint within an epoch every N mini-batches
    c.keep_checkpoints = 3      # the newest K checkpoints are kept (0: none are saved,
                                # and a stopped run starts over)
    c.tensorboard = True        # tensorboard/ event files beside metrics.jsonl
    c.plots = True              # learning_curves.png, errors.png, filters.png at the end
    c.compile_cache = "auto"    # folder of JAX's persistent compilation cache: auto
                                # ($MNIST_CNN_COMPILE_CACHE, else ~/.cache/mnist_cnn/jax),
                                # a path, or "" (off); it holds code that runs: trust it


def num_train_images(c) -> int:
    """Images in one training epoch: train_size, plus the 10,000 validation images with
    train_on_validation, times 5 with the book's expansion."""
    n = c.train_size + (10_000 if c.train_on_validation else 0)
    return n * (5 if c.expand_data else 1)


MAX_SHIFT = 27   # pixels: a shift of 28 or more leaves a 28x28 image blank
MAX_EVAL_ROTATE = 45.0   # degrees: test-time rotated views (config.eval_rotate)
MAX_EVAL_ZOOM = 0.5      # test-time zoomed views by 1 -+ Z (config.eval_zoom)
MAX_SEED = 2**31 - 1     # seeds are int32 in stacked (vmapped) programs, and a key
                         # keeps a seed's low 32 bits: larger ones repeat or overflow


def _check(cond, msg):
    if not cond:
        raise ConfigError(msg)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# A field's type as validate checks it: (test, what the error says it must be).
_TYPES = {int: (_is_int, "an integer"), float: (_is_num, "a number"),
          bool: (lambda v: isinstance(v, bool), "True or False"),
          str: (lambda v: isinstance(v, str), "a string")}


@dataclasses.dataclass(frozen=True)
class Field:
    """How validate checks one top-level field: its type (int; float: any finite number;
    bool; str; None: not checked), then ok(value). A failed ok raises "config.NAME " + message,
    where {v} stands for the value."""
    name: str
    type: type | None = None
    ok: Callable[[Any], bool] = lambda v: True
    message: str = ""

    def check_type(self, c):
        if self.type is not None:
            is_type, what = _TYPES[self.type]
            value = c[self.name]
            _check(is_type(value), f"config.{self.name} must be {what}, got {value!r}")
            # inf or NaN would pass a `> 0` check (an infinite learning rate or L2)
            _check(self.type is not float or math.isfinite(value),
                   f"config.{self.name} must be a finite number, got {value!r}")

    def check_value(self, c):
        value = c[self.name]
        _check(self.ok(value), f"config.{self.name} {self.message.format(v=value)}")


def _in(lo, hi, hi_open=False):
    """ok for a value in [lo, hi], or [lo, hi) with hi_open."""
    return lambda v: lo <= v < hi if hi_open else lo <= v <= hi


def _one_of(*choices):
    return lambda v: v in choices


_POSITIVE = lambda v: v > 0
_NON_NEGATIVE = lambda v: v >= 0

# Every top-level field validate checks: its type, the values it takes, and the message
# ("config.NAME " + message) when the value is not one of them.
FIELDS = (
    Field("num_epochs", int, _POSITIVE, "must be positive, got {v}"),
    Field("eval_every", int, _POSITIVE, "must be positive (1: every epoch), got {v}"),
    Field("batch_size", int, _POSITIVE, "must be positive, got {v}"),
    Field("train_size", int, _in(1, 50_000), "must be in [1, 50000], got {v}"),
    Field("eval_batch_size", int, _POSITIVE, "must be positive"),
    Field("bn_calibration_images", int, _in(1, 50_000), "must be in [1, 50000], got {v}"),
    Field("micro_batch", int, _NON_NEGATIVE, "must be >= 0 (0: auto), got {v}"),
    Field("chunk_steps", int, _POSITIVE, "must be positive"),
    Field("checkpoint_every_steps", int, _NON_NEGATIVE,
          "must be >= 0 (0: at the end of each epoch only)"),
    Field("keep_checkpoints", int, _NON_NEGATIVE, "must be >= 0 (0: no checkpoints)"),
    Field("num_members", int, _POSITIVE,
          "must be >= 1 (an ensemble needs at least one network), got {v}"),
    Field("num_runs", int, _POSITIVE, "must be >= 1, got {v}"),
    Field("seed", int, _in(0, MAX_SEED), f"must be in [0, {MAX_SEED}] (jax takes 32-bit "
          "seeds), got {v}"),
    Field("vote", None, _one_of("plurality", "mean_softmax"),
          "must be plurality or mean_softmax, got {v!r}"),
    Field("augment_shift", int, _in(0, MAX_SHIFT), f"must be in [0, {MAX_SHIFT}] pixels "
          "(a shift of 28 or more leaves a blank image), got {v}"),
    Field("eval_shifts", int, _in(0, MAX_SHIFT), f"must be in [0, {MAX_SHIFT}] pixels "
          "(0: no test-time shifts; 28 or more leaves a blank image), got {v}"),
    Field("eval_rotate", float, _in(0, MAX_EVAL_ROTATE), f"must be in [0, {MAX_EVAL_ROTATE}] "
          "degrees (0: no rotated test-time views), got {v}"),
    Field("eval_zoom", float, _in(0, MAX_EVAL_ZOOM), f"must be in [0, {MAX_EVAL_ZOOM}] "
          "(views zoomed by 1 -+ Z; 0: none), got {v}"),
    Field("width_norm", int, _in(0, 28), "must be in [0, 28] pixels (the digit's "
          "bounding-box width; Ciresan et al. used 10-20; 0: off), got {v}"),
    Field("augment_rotate", float, _in(0, 180, hi_open=True),
          "must be in [0, 180) degrees, got {v}"),
    Field("augment_scale", float, _in(0, 1, hi_open=True),
          "must be in [0, 1) (a zoom factor in [1 - s, 1 + s]), got {v}"),
    Field("augment_elastic", float, _in(0, 100), "must be in [0, 100] (the displacement "
          "field's scale alpha; Simard et al. used 34), got {v}"),
    Field("augment_elastic_sigma", float, _in(0.5, 10), "must be in [0.5, 10] pixels "
          "(the field's smoothing; Simard et al. used 4), got {v}"),
    *(Field(name, bool) for name in ("shuffle", "expand_data", "nesterov", "download",
                                     "plots", "train_on_validation", "deskew",
                                     "tensorboard")),
    Field("learning_rate", float, _POSITIVE, "must be positive, got {v}"),
    Field("l2", float, _NON_NEGATIVE, "must be >= 0, got {v}"),
    Field("momentum", float, _in(0, 1, hi_open=True), "must be in [0, 1), got {v}"),
    Field("optimizer", None, _one_of("sgd", "adam"), "must be sgd or adam, got {v!r}"),
    Field("adam_b1", float, _in(0, 1, hi_open=True), "must be in [0, 1), got {v}"),
    Field("adam_b2", float, _in(0, 1, hi_open=True), "must be in [0, 1), got {v}"),
    Field("warmup_epochs", float),
    Field("ema_decay", float, _in(0, 1, hi_open=True), "must be in [0, 1) (0: no weight "
          "average; 0.999 forgets with a time constant of ~1000 steps), got {v}"),
    Field("schedule", None, _one_of("constant", "cosine", "onecycle"),
          "must be constant, cosine or onecycle, got {v!r}"),
    Field("init", None, _one_of(*INITS), f"must be one of {INITS}, got {{v!r}}"),
    Field("dropout_mode", None, _one_of(*L.DROPOUT_MODES),
          f"must be one of {L.DROPOUT_MODES}, got {{v!r}}"),
    Field("conv_impl", None, _one_of(*L.CONV_IMPLS),
          f"must be one of {L.CONV_IMPLS}, got {{v!r}}"),
    Field("parallel", None, _one_of("auto", "none", "pmap", "sharding"),
          "must be auto, none, pmap or sharding, got {v!r}"),
    Field("num_devices", int, _NON_NEGATIVE, "must be >= 0 (0: all local devices), got {v}"),
    Field("grad", None, _one_of("autodiff", "manual"), "must be autodiff or manual, got {v!r}"),
    Field("dtype", None, _one_of("float32", "bfloat16"),
          "must be float32 or bfloat16, got {v!r}"),
    Field("dataset", None, _one_of(*DATASETS),
          f"must be one of {', '.join(DATASETS)}, got {{v!r}}"),
    Field("compile_cache", str),
    Field("data_source", None, _one_of("auto", "idx", "tfds"),
          "must be auto, idx or tfds, got {v!r}"),
)


def _batch_fits_train_size(c):
    _check(c.batch_size <= c.train_size, f"config.batch_size ({c.batch_size}) exceeds "
           f"config.train_size ({c.train_size})")


def _micro_batch_divides_batch(c):
    _check(c.micro_batch == 0 or c.micro_batch >= c.batch_size
           or c.batch_size % c.micro_batch == 0,
           f"config.micro_batch ({c.micro_batch}) must divide config.batch_size "
           f"({c.batch_size}), or be 0 (auto) or >= the batch size (whole)")


def _best_run_needs_validation(c):
    _check(c.num_runs == 1 or not c.train_on_validation, "config.num_runs > 1 keeps the "
           "run with the best validation accuracy, but config.train_on_validation trains "
           "on the validation images: set one of them back (num_runs=1 or "
           "train_on_validation=False)")


def _members_or_runs(c):
    _check(c.num_members == 1 or c.num_runs == 1, "config.num_members and config.num_runs "
           "cannot both exceed 1: train an ensemble, or repeat a single network")


def _stacked_seeds_in_range(c):
    last = c.seed + max(c.num_members, c.num_runs) - 1
    _check(last <= MAX_SEED, f"config.seed={c.seed} gives the stacked networks seeds up "
           f"to {last}, beyond {MAX_SEED}; use a smaller seed")


def _warmup_within_epochs(c):
    _check(0 <= c.warmup_epochs < c.num_epochs or c.schedule != "onecycle",
           f"config.warmup_epochs must be in [0, num_epochs={c.num_epochs}) for the "
           f"onecycle schedule, got {c.warmup_epochs}")


def _momentum_is_sgds(c):
    _check(c.optimizer == "sgd" or (c.momentum == 0 and not c.nesterov),
           f"config.momentum and config.nesterov belong to optimizer=sgd; {c.optimizer}'s "
           f"momentum is config.adam_b1: set momentum=0.0 and nesterov=False")


def _manual_grad_in_float32(c):
    _check(c.grad == "autodiff" or c.dtype == "float32", "config.grad=manual computes in "
           "float32 only; use config.dtype=float32 or config.grad=autodiff")


def _custom_dataset_has_a_directory(c):
    _check(c.dataset != "custom" or (c.data_dir and c.data_source != "tfds"),
           "config.dataset=custom reads the four IDX files of a directory: set "
           "--config.data_dir=DIR (with data_source auto or idx)")


def _layers(c):
    _check(isinstance(c.layers, (tuple, list)) and len(c.layers) > 0,
           "config.layers must be a non-empty list of layers")
    for i, layer in enumerate(c.layers):
        _validate_layer(i, layer, last=i == len(c.layers) - 1)


def _manual_grad_without_batch_norm(c):
    _check(c.grad == "autodiff" or not uses_batch_norm(c), "config.grad=manual has no "
           "batch normalisation (mnist_cnn/backprop.py is the book's layers); use "
           "config.grad=autodiff or layers without batch_norm")


# The rules joining fields, in the order validate applies them after FIELDS.
CROSS_CHECKS = (_batch_fits_train_size, _micro_batch_divides_batch,
                _best_run_needs_validation, _members_or_runs, _stacked_seeds_in_range,
                _warmup_within_epochs, _momentum_is_sgds,
                _manual_grad_in_float32, _layers, _manual_grad_without_batch_norm,
                _custom_dataset_has_a_directory)


def validate(c):
    """Returns c, or raises ConfigError with a one-line message naming the first bad
    field: every field's type, then every field's value (both in FIELDS' order), then
    CROSS_CHECKS, the layers among them."""
    for field in FIELDS:
        field.check_type(c)
    for field in FIELDS:
        field.check_value(c)
    for check in CROSS_CHECKS:
        check(c)
    return c


def is_committee(c) -> bool:
    """Whether `c` is a committee file's config (mnist_cnn/committee_config.py), not
    an experiment's: answered without loading the committee code."""
    return c is not None and c.get("kind") == "committee"


def uses_batch_norm(c) -> bool:
    return any(layer.get("batch_norm", False) for layer in c.layers)


def _validate_layer(i, layer, last):
    where = f"config.layers[{i}]"
    kind = layer.get("kind")
    _check(kind in LAYER_KINDS, f"{where}.kind must be one of {LAYER_KINDS}, got {kind!r}")
    _check(_is_int(layer.features) and layer.features > 0,
           f"{where}.features must be a positive integer, got {layer.features!r}")
    _check((kind == "softmax") == last, f"{where}: the last layer, and only the last, "
           "must be a softmax layer")
    if kind in ("fc", "softmax"):
        _check(_is_num(layer.dropout) and 0 <= layer.dropout < 1,
               f"{where}.dropout must be in [0, 1), got {layer.dropout!r}")
    if kind in ("fc", "conv_pool"):
        _check(layer.activation in L.ACTIVATIONS,
               f"{where}.activation must be one of {L.ACTIVATIONS}, got {layer.activation!r}")
    if kind == "conv_pool":
        for f in ("kernel", "stride", "pool_window"):
            _check(_is_int(layer[f]) and layer[f] > 0,
                   f"{where}.{f} must be a positive integer, got {layer[f]!r}")
        _check(_is_int(layer.pool_stride) and layer.pool_stride >= 0,
               f"{where}.pool_stride must be >= 0 (0 means the window), got {layer.pool_stride!r}")
        _check(layer.pool in L.POOLS,
               f"{where}.pool must be one of {L.POOLS}, got {layer.pool!r}")
        _check(isinstance(layer.get("batch_norm", False), bool),
               f"{where}.batch_norm must be True or False, got {layer.get('batch_norm')!r}")
        _check(layer.padding in ("VALID", "SAME"),
               f"{where}.padding must be VALID or SAME, got {layer.padding!r}")
