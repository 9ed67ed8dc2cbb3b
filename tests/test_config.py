"""config: base_config's fields and defaults, and validate's error for every field and
every rule across fields, word for word (tests and users match on them)."""

import ml_collections
import pytest

from mnist_cnn import config as config_lib

# Every field of base_config() with its default.
DEFAULTS = [
    ("name", ""), ("layers", ()), ("num_epochs", 60), ("batch_size", 10),
    ("learning_rate", 0.1), ("l2", 0.0), ("momentum", 0.0), ("nesterov", False),
    ("optimizer", "sgd"), ("adam_b1", 0.9), ("adam_b2", 0.999),
    ("schedule", "constant"), ("warmup_epochs", 0.0), ("ema_decay", 0.0), ("seed", 0),
    ("train_size", 50000), ("train_on_validation", False), ("dataset", "mnist"),
    ("data_dir", ""),
    ("data_source", "auto"), ("download", True), ("shuffle", False), ("width_norm", 0),
    ("deskew", False), ("expand_data", False), ("augment_shift", 0),
    ("augment_rotate", 0.0), ("augment_scale", 0.0), ("augment_elastic", 0.0),
    ("augment_elastic_sigma", 4.0), ("num_members", 1), ("vote", "plurality"),
    ("num_runs", 1), ("init", "network3"), ("dropout_mode", "network3"),
    ("conv_impl", "auto"), ("parallel", "auto"), ("num_devices", 0), ("dtype", "float32"),
    ("grad", "autodiff"), ("micro_batch", 0), ("bn_calibration_images", 10000),
    ("eval_batch_size", 200), ("eval_shifts", 0), ("eval_rotate", 0.0), ("eval_zoom", 0.0),
    ("eval_every", 1), ("chunk_steps", 500), ("checkpoint_every_steps", 0),
    ("keep_checkpoints", 3), ("tensorboard", True), ("plots", True),
    ("compile_cache", "auto"),
]


def test_base_config_fields_and_defaults():
    got = config_lib.base_config().to_dict()
    assert got == dict(DEFAULTS)
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in DEFAULTS}


def valid_config(**fields):
    """A small valid config that takes any value (no ConfigDict type safety), as an
    experiment file could write it."""
    c = config_lib.base_config()
    c.layers = (config_lib.conv_pool(2, activation="relu"), config_lib.fc(8, dropout=0.2),
                config_lib.softmax(10))
    c.train_size = 100
    out = ml_collections.ConfigDict(type_safe=False)
    for k, v in c.items():
        out[k] = v
    for k, v in fields.items():
        out[k] = v
    return out


# (field, bad value, the whole error message)
FIELD_CASES = [
    ("num_epochs", "x", "config.num_epochs must be an integer, got 'x'"),
    ("num_epochs", 0, "config.num_epochs must be positive, got 0"),
    ("eval_every", "x", "config.eval_every must be an integer, got 'x'"),
    ("eval_every", 0, "config.eval_every must be positive (1: every epoch), got 0"),
    ("batch_size", "x", "config.batch_size must be an integer, got 'x'"),
    ("batch_size", 0, "config.batch_size must be positive, got 0"),
    ("train_size", "x", "config.train_size must be an integer, got 'x'"),
    ("train_size", 50001, "config.train_size must be in [1, 50000], got 50001"),
    ("eval_batch_size", "x", "config.eval_batch_size must be an integer, got 'x'"),
    ("eval_batch_size", 0, "config.eval_batch_size must be positive"),
    ("bn_calibration_images", "x",
     "config.bn_calibration_images must be an integer, got 'x'"),
    ("bn_calibration_images", 0, "config.bn_calibration_images must be in [1, 50000], got 0"),
    ("micro_batch", "x", "config.micro_batch must be an integer, got 'x'"),
    ("micro_batch", -1, "config.micro_batch must be >= 0 (0: auto), got -1"),
    ("chunk_steps", "x", "config.chunk_steps must be an integer, got 'x'"),
    ("chunk_steps", 0, "config.chunk_steps must be positive"),
    ("checkpoint_every_steps", "x",
     "config.checkpoint_every_steps must be an integer, got 'x'"),
    ("checkpoint_every_steps", -1,
     "config.checkpoint_every_steps must be >= 0 (0: at the end of each epoch only)"),
    ("keep_checkpoints", "x", "config.keep_checkpoints must be an integer, got 'x'"),
    ("keep_checkpoints", -1, "config.keep_checkpoints must be >= 0 (0: no checkpoints)"),
    ("num_members", "x", "config.num_members must be an integer, got 'x'"),
    ("num_members", 0, "config.num_members must be >= 1 (an ensemble needs at least one "
     "network), got 0"),
    ("num_runs", "x", "config.num_runs must be an integer, got 'x'"),
    ("num_runs", 0, "config.num_runs must be >= 1, got 0"),
    ("seed", "x", "config.seed must be an integer, got 'x'"),
    ("seed", True, "config.seed must be an integer, got True"),
    ("vote", "borda", "config.vote must be plurality or mean_softmax, got 'borda'"),
    ("augment_shift", "x", "config.augment_shift must be an integer, got 'x'"),
    ("augment_shift", 28, "config.augment_shift must be in [0, 27] pixels (a shift of 28 "
     "or more leaves a blank image), got 28"),
    ("eval_shifts", "x", "config.eval_shifts must be an integer, got 'x'"),
    ("eval_shifts", 28, "config.eval_shifts must be in [0, 27] pixels (0: no test-time "
     "shifts; 28 or more leaves a blank image), got 28"),
    ("eval_rotate", "x", "config.eval_rotate must be a number, got 'x'"),
    ("eval_rotate", 45.5, "config.eval_rotate must be in [0, 45.0] degrees (0: no rotated "
     "test-time views), got 45.5"),
    ("eval_zoom", "x", "config.eval_zoom must be a number, got 'x'"),
    ("eval_zoom", 0.6, "config.eval_zoom must be in [0, 0.5] (views zoomed by 1 -+ Z; "
     "0: none), got 0.6"),
    ("width_norm", "x", "config.width_norm must be an integer, got 'x'"),
    ("width_norm", 29, "config.width_norm must be in [0, 28] pixels (the digit's "
     "bounding-box width; Ciresan et al. used 10-20; 0: off), got 29"),
    ("augment_rotate", "x", "config.augment_rotate must be a number, got 'x'"),
    ("augment_rotate", 180.0, "config.augment_rotate must be in [0, 180) degrees, got 180.0"),
    ("augment_scale", "x", "config.augment_scale must be a number, got 'x'"),
    ("augment_scale", 1.0, "config.augment_scale must be in [0, 1) (a zoom factor in "
     "[1 - s, 1 + s]), got 1.0"),
    ("augment_elastic", "x", "config.augment_elastic must be a number, got 'x'"),
    ("augment_elastic", 100.5, "config.augment_elastic must be in [0, 100] (the "
     "displacement field's scale alpha; Simard et al. used 34), got 100.5"),
    ("augment_elastic_sigma", "x", "config.augment_elastic_sigma must be a number, got 'x'"),
    ("augment_elastic_sigma", 0.4, "config.augment_elastic_sigma must be in [0.5, 10] "
     "pixels (the field's smoothing; Simard et al. used 4), got 0.4"),
    ("shuffle", "x", "config.shuffle must be True or False, got 'x'"),
    ("expand_data", 1, "config.expand_data must be True or False, got 1"),
    ("nesterov", "x", "config.nesterov must be True or False, got 'x'"),
    ("download", "x", "config.download must be True or False, got 'x'"),
    ("plots", "x", "config.plots must be True or False, got 'x'"),
    ("tensorboard", "x", "config.tensorboard must be True or False, got 'x'"),
    ("train_on_validation", "x", "config.train_on_validation must be True or False, got 'x'"),
    ("deskew", "x", "config.deskew must be True or False, got 'x'"),
    ("learning_rate", "x", "config.learning_rate must be a number, got 'x'"),
    ("learning_rate", 0.0, "config.learning_rate must be positive, got 0.0"),
    ("l2", "x", "config.l2 must be a number, got 'x'"),
    ("l2", -0.1, "config.l2 must be >= 0, got -0.1"),
    ("momentum", "x", "config.momentum must be a number, got 'x'"),
    ("momentum", 1.0, "config.momentum must be in [0, 1), got 1.0"),
    ("optimizer", "rmsprop", "config.optimizer must be sgd or adam, got 'rmsprop'"),
    ("adam_b1", "x", "config.adam_b1 must be a number, got 'x'"),
    ("adam_b1", 1.0, "config.adam_b1 must be in [0, 1), got 1.0"),
    ("adam_b2", -0.1, "config.adam_b2 must be in [0, 1), got -0.1"),
    ("warmup_epochs", "x", "config.warmup_epochs must be a number, got 'x'"),
    ("ema_decay", "x", "config.ema_decay must be a number, got 'x'"),
    ("ema_decay", 1.0, "config.ema_decay must be in [0, 1) (0: no weight average; 0.999 "
     "forgets with a time constant of ~1000 steps), got 1.0"),
    ("schedule", "linear", "config.schedule must be constant, cosine or onecycle, "
     "got 'linear'"),
    ("init", "xavier", "config.init must be one of ('network3', 'modern'), got 'xavier'"),
    ("dropout_mode", "spatial", "config.dropout_mode must be one of ('network3', "
     "'inverted'), got 'spatial'"),
    ("conv_impl", "winograd", "config.conv_impl must be one of ('auto', 'patches', "
     "'xla'), got 'winograd'"),
    ("parallel", "mpi", "config.parallel must be auto, none, pmap or sharding, got 'mpi'"),
    ("num_devices", "x", "config.num_devices must be an integer, got 'x'"),
    ("num_devices", -1, "config.num_devices must be >= 0 (0: all local devices), got -1"),
    ("grad", "numeric", "config.grad must be autodiff or manual, got 'numeric'"),
    ("dtype", "float16", "config.dtype must be float32 or bfloat16, got 'float16'"),
    ("data_source", "s3", "config.data_source must be auto, idx or tfds, got 's3'"),
    ("compile_cache", None, "config.compile_cache must be a string, got None"),
    ("dataset", "emnist", "config.dataset must be one of mnist, fashion_mnist, kmnist, "
     "custom, got 'emnist'"),
]


@pytest.mark.parametrize("field,value,message", FIELD_CASES)
def test_every_field_error_word_for_word(field, value, message):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(valid_config(**{field: value}))
    assert str(e.value) == message


def test_every_checked_field_has_a_case():
    assert {f.name for f in config_lib.FIELDS} == {field for field, _, _ in FIELD_CASES}


def test_a_valid_config_passes_and_is_returned():
    c = valid_config()
    assert config_lib.validate(c) is c


L = config_lib
CROSS_CASES = [
    (dict(batch_size=200), "config.batch_size (200) exceeds config.train_size (100)"),
    (dict(batch_size=128, train_size=1000, micro_batch=48),
     "config.micro_batch (48) must divide config.batch_size (128), or be 0 (auto) or >= "
     "the batch size (whole)"),
    (dict(num_runs=2, train_on_validation=True),
     "config.num_runs > 1 keeps the run with the best validation accuracy, but "
     "config.train_on_validation trains on the validation images: set one of them back "
     "(num_runs=1 or train_on_validation=False)"),
    (dict(num_runs=2, num_members=2),
     "config.num_members and config.num_runs cannot both exceed 1: train an ensemble, or "
     "repeat a single network"),
    (dict(schedule="onecycle", warmup_epochs=60.0),
     "config.warmup_epochs must be in [0, num_epochs=60) for the onecycle schedule, "
     "got 60.0"),
    (dict(optimizer="adam", momentum=0.9),
     "config.momentum and config.nesterov belong to optimizer=sgd; adam's momentum is "
     "config.adam_b1: set momentum=0.0 and nesterov=False"),
    (dict(grad="manual", dtype="bfloat16"),
     "config.grad=manual computes in float32 only; use config.dtype=float32 or "
     "config.grad=autodiff"),
    (dict(layers=()), "config.layers must be a non-empty list of layers"),
    (dict(grad="manual", layers=(L.conv_pool(2, batch_norm=True), L.softmax())),
     "config.grad=manual has no batch normalisation (mnist_cnn/backprop.py is the book's "
     "layers); use config.grad=autodiff or layers without batch_norm"),
    (dict(layers=(L.fc(3), L.softmax(), L.softmax())),
     "config.layers[1]: the last layer, and only the last, must be a softmax layer"),
    (dict(layers=(L.conv_pool(2, pool_stride=-1), L.softmax())),
     "config.layers[0].pool_stride must be >= 0 (0 means the window), got -1"),
    (dict(layers=(L.conv_pool(2, activation="gelu"), L.softmax())),
     "config.layers[0].activation must be one of ('sigmoid', 'tanh', 'relu', 'linear'), "
     "got 'gelu'"),
    (dict(layers=(L.fc(0), L.softmax())),
     "config.layers[0].features must be a positive integer, got 0"),
    (dict(layers=(L.fc(3, dropout=1.0), L.softmax())),
     "config.layers[0].dropout must be in [0, 1), got 1.0"),
    (dict(dataset="custom"), "config.dataset=custom reads the four IDX files of a "
     "directory: set --config.data_dir=DIR (with data_source auto or idx)"),
    (dict(dataset="custom", data_dir="/d", data_source="tfds"), "config.dataset=custom "
     "reads the four IDX files of a directory: set --config.data_dir=DIR (with "
     "data_source auto or idx)"),
]


@pytest.mark.parametrize("fields,message", CROSS_CASES)
def test_rules_across_fields_and_layers_word_for_word(fields, message):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(valid_config(**fields))
    assert str(e.value) == message


def test_a_type_error_is_reported_before_any_value_error():
    """validate checks every field's type first, then the values: a config with both
    names the field of the wrong type."""
    with pytest.raises(config_lib.ConfigError, match="config.seed must be an integer"):
        config_lib.validate(valid_config(num_epochs=0, seed="x"))
    with pytest.raises(config_lib.ConfigError, match="config.num_epochs must be positive"):
        config_lib.validate(valid_config(num_epochs=0, batch_size=200))
