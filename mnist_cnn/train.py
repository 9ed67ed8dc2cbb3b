"""Training state, optax SGD, jitted train and eval steps, an epoch in `lax.scan`.

The training images live on the device as uint8 for the whole run; each step slices
its mini-batch out of them and scales it to [0, 1]. A chunk of `num_steps` mini-batches
is one jitted `lax.scan`; with chunk_steps >= steps per epoch, a whole epoch is one call.
"""

from __future__ import annotations

import functools
import re
from functools import partial
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mnist_cnn import augment, backprop, data, losses, networks


@flax.struct.dataclass
class TrainState:
    step: jax.Array     # global mini-batch counter
    params: Any
    opt_state: Any
    key: jax.Array      # root of the dropout and shuffle streams
    ema: Any = None     # exponential moving average of params (config.ema_decay > 0)


def with_ema(state: TrainState, decay: float) -> TrainState:
    """The state with its weight average started at its parameters (decay > 0), or
    unchanged (decay 0: no average)."""
    if not decay:
        return state
    return state.replace(ema=jax.tree.map(jnp.copy, state.params))


def eval_params(state: TrainState):
    """The parameters a run evaluates: the weight average when it keeps one."""
    return state.params if state.ema is None else state.ema


def update_ema(ema, params, decay):
    """Polyak-Ruppert averaging with exponential forgetting: decay * ema + (1 - decay) *
    params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_schedule(config, steps_per_epoch: int):
    lr = config.learning_rate
    total = config.num_epochs * steps_per_epoch
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total)
    if config.schedule == "onecycle":
        warm = max(1, int(config.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(lr / 25, lr, warm, total, lr / 1e4)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def make_optimizer(config, steps_per_epoch: int, momentum=None) -> optax.GradientTransformation:
    """Plain SGD (network3), or with (Nesterov) momentum and a schedule; with
    config.optimizer=adam, Adam (betas adam_b1, adam_b2) on the schedule. `momentum`
    overrides config.momentum and always keeps a momentum trace (a vmapped sweep passes
    each run's value, possibly traced, possibly 0); SGD only."""
    schedule = make_schedule(config, steps_per_epoch)
    if config.get("optimizer", "sgd") == "adam":
        if momentum is not None:
            raise ValueError("a sweep over momentum needs config.optimizer=sgd; Adam's "
                             "momentum is config.adam_b1")
        return optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2)
    m = config.momentum or None if momentum is None else momentum
    return optax.sgd(schedule, momentum=m, nesterov=bool(config.nesterov))


def init_state(model, tx, seed) -> TrainState:
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    params = networks.init_params(model, init_key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), run_key)


def init_states(model, tx, seed: int, num_members: int, seeds=None) -> TrainState:
    """One state, or `num_members` stacked on axis 0 with seeds seed, seed+1, ...
    (member 0 is the run a single `seed` would give), or one per entry of `seeds`."""
    fn, seeds = _init_program(model, tx, seed, num_members, seeds)
    return _compile_cheaply(fn, seeds)(seeds)


def state_shapes(model, tx, num_members: int, ema_decay: float = 0.0) -> TrainState:
    """What with_ema(init_states(...), ema_decay) returns, as jax.ShapeDtypeStruct
    leaves: nothing compiled or computed. A template to restore a checkpoint into."""
    fn, seeds = _init_program(model, tx, 0, num_members)
    return jax.eval_shape(lambda s: with_ema(fn(s), ema_decay), seeds)


def _init_program(model, tx, seed, num_members, seeds=None):
    """(function of the seed(s) that initialises the state(s), its argument)."""
    if seeds is not None:
        return jax.vmap(lambda s: init_state(model, tx, s)), jnp.asarray(seeds)
    if num_members == 1:
        return (lambda s: init_state(model, tx, s)), seed
    return jax.vmap(lambda s: init_state(model, tx, s)), seed + jnp.arange(num_members)


def _compile_cheaply(fn, *args, level: int = 1):
    """jit(fn) compiled for a function that runs once (or once an epoch). Run eagerly,
    Flax's init compiles every primitive op by op (~4 s on a CPU); jitted at XLA CPU's
    default optimisation level 3 its random.normal calls take ~1.5 s to compile, at
    level 1 ~0.5 s with bit-identical results (level 0 changes the normal samples'
    last bits; tests/test_train.py checks against the eager init and shuffle)."""
    lowered = jax.jit(fn).lower(*args)
    if jax.default_backend() == "cpu":
        return lowered.compile(compiler_options={"xla_backend_optimization_level": level})
    return lowered.compile()


def epoch_order(key, epoch, n, stacked: bool):
    """The epoch's shuffle order: (n,), or (members, n) from each member's own key; one
    cheaply compiled program per process serves every epoch (run eagerly, the shuffle
    compiles its fold_in, iota and sort one by one, ~0.5 s on a CPU)."""
    key = jnp.asarray(key)
    program = _order_program(n, stacked, key.shape, key.dtype)
    return program(key, jnp.asarray(epoch, jnp.int32))


@functools.lru_cache(maxsize=8)
def _order_program(n: int, stacked: bool, key_shape, key_dtype):
    def order(key, epoch):
        if stacked:
            return jax.vmap(lambda k: shuffle_order(k, epoch, n))(key)
        return shuffle_order(key, epoch, n)
    return _compile_cheaply(order, jax.ShapeDtypeStruct(key_shape, key_dtype),
                            jax.ShapeDtypeStruct((), jnp.int32), level=0)


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Full mini-batches per epoch; the remainder is dropped, as network3 does."""
    return train_size // batch_size


def chunk_size(steps: int, target: int) -> int:
    """The largest divisor of `steps` not above `target`, so one compiled chunk fits all."""
    target = max(1, min(target, steps))
    for n in range(target, 0, -1):
        if steps % n == 0:
            return n
    return 1


def loss_fn(params, model, images, labels, key, lmbda, num_batches, train=True,
            keep_probs=None):
    """network3's cost: mean log-likelihood + 0.5*lmbda*sum(w**2)/num_batches.
    keep_probs: per-layer dropout keep probabilities overriding the config's rates
    (Network's argument; a vmapped sweep's)."""
    kw = {} if keep_probs is None else dict(keep_probs=keep_probs)
    logits = model.apply({"params": params}, images, train=train, rngs={"dropout": key},
                         **kw)
    nll = losses.log_likelihood(logits, labels)
    return nll + losses.l2_penalty(params, lmbda, num_batches), nll


def shuffle_order(key, epoch, n):
    """The seeded permutation of the training set for one epoch."""
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), epoch), n)


HYPER_FIELDS = ("learning_rate", "l2", "momentum")   # per-run values a step can take
DROPOUT_FIELD = re.compile(r"layers\[(\d+)\]\.dropout")   # and each layer's dropout rate


def is_hyper_field(field: str) -> bool:
    """A per-run value a stacked step can take: HYPER_FIELDS or layers[i].dropout."""
    return field in HYPER_FIELDS or DROPOUT_FIELD.fullmatch(field) is not None


def traced_hp(hp: dict) -> dict:
    """{field: [value per run]} (fields for which is_hyper_field holds) -> the arrays a
    stacked step takes: HYPER_FIELDS as float32 arrays, and the dropout rates under
    "keep" as {layer index: keep probabilities 1 - rate}. The keep probabilities are
    computed here in float64 and rounded once, as a Python-float rate is, so a run's
    masks and (1-p) scaling are bit for bit those of the same run with its rate in the
    config."""
    out, keep = {}, {}
    for field, values in hp.items():
        m = DROPOUT_FIELD.fullmatch(field)
        if m:
            keep[int(m.group(1))] = jnp.asarray([1.0 - float(v) for v in values], jnp.float32)
        elif field in HYPER_FIELDS:
            out[field] = jnp.asarray(values, jnp.float32)
        else:
            raise ValueError(f"{field} is not a per-run hyperparameter")
    if keep:
        out["keep"] = keep
    return out


MAX_UNROLLED_SLICES = 8  # micro-batch slices unrolled in the step (more: a loop, to
                         # keep compile time in check for e.g. config.micro_batch=1)
CPU_SLICE_FLOPS = 8e8   # auto micro-batching on a CPU: at most this much work a pass
CPU_MIN_SLICE = 64      # ... in slices of at least this many images


def micro_batch_size(requested: int, batch: int, backend: str | None = None,
                     flops_per_image: float | None = None) -> int:
    """How many images of a `batch`-image mini-batch (one device's share) one gradient
    pass takes: the whole batch, or equal slices accumulated in turn (the same update).

    requested > 0: that size (the whole batch when it is at least the batch; otherwise it
    must divide the batch). 0 (auto): on a CPU, the largest divisor of the batch, of at
    least CPU_MIN_SLICE images, whose training FLOPs (flops_per_image, e.g. from
    networks.model_flops) stay within CPU_SLICE_FLOPS; the whole batch when it fits or no
    such slice exists. Measured on a 2-core CPU (docs/benchmarks.md): dbl_conv_relu (9.2
    MFLOP an image) trains faster in slices of 64 than whole at 128 and 256 images, and
    whole at 64; the narrower speedrun network (1.9 MFLOP) fastest whole at 128; the
    wider modern one (28 MFLOP) 5% faster in slices of 64 than of 32 or whole at 128.
    Other backends: the whole batch.
    """
    if requested >= batch:
        return batch
    if requested > 0:
        if batch % requested:
            raise ValueError(f"config.micro_batch ({requested}) must divide the "
                             f"{batch}-image mini-batch (per device)")
        return requested
    if ((backend or jax.default_backend()) != "cpu" or not flops_per_image
            or batch * flops_per_image <= CPU_SLICE_FLOPS):
        return batch
    sizes = [d for d in range(CPU_MIN_SLICE, batch) if batch % d == 0]
    fitting = [d for d in sizes if d * flops_per_image <= CPU_SLICE_FLOPS]
    return max(fitting) if fitting else min(sizes, default=batch)


def make_train_step(model, tx, lmbda: float, num_batches: int, axis_name=None,
                    config=None, split=None):
    """(state, images float NHWC, labels[, hp]) -> (state, (loss, nll)); pure, jittable.
    axis_name: inside pmap, each device holds a slice of the mini-batch; gradients and
    losses are averaged over the axis (equal slices, so this is the whole batch's mean)
    and each device draws its own dropout masks.
    split: under jit over a device mesh (sharding.BatchSplit), the global mini-batch is
    split over the devices and XLA averages the gradients; see make_grads.
    hp: this run's values of some HYPER_FIELDS (scalars, traced under a vmapped sweep),
    overriding the config's: l2 enters the cost, momentum the optimizer's trace, and the
    learning rate scales the updates of `tx` (built with config.learning_rate, so its
    schedule's shape is kept); under "keep", {layer index: dropout keep probability}
    (see traced_hp) overriding those layers' rates (autodiff only)."""
    grads_of = make_grads(model, num_batches, config, split)
    ema_decay = 0.0 if config is None else float(config.get("ema_decay", 0.0))

    def step(state: TrainState, images, labels, hp=None):
        hp = hp or {}
        key = _step_key(state, axis_name)
        grads, (loss, nll) = grads_of(state.params, images, labels, key,
                                      hp.get("l2", lmbda), hp.get("keep"))
        if axis_name is not None:
            grads, loss, nll = lax.pmean((grads, loss, nll), axis_name)
        opt = _optimizer_for(tx, hp, config, num_batches)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        updates = _scaled_updates(updates, hp, config)
        return _apply_updates(state, updates, opt_state, ema_decay), (loss, nll)

    return step


def _step_key(state: TrainState, axis_name):
    """The step's dropout key: the state's stream 0 at this step, and under pmap this
    device's own."""
    key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, lax.axis_index(axis_name))
    return key


def _optimizer_for(tx, hp: dict, config, num_batches: int):
    """tx, or the same optimizer with a sweep's momentum (hp["momentum"])."""
    if "momentum" not in hp:
        return tx
    return make_optimizer(config, num_batches, momentum=hp["momentum"])


def _scaled_updates(updates, hp: dict, config):
    """The updates, times a sweep's learning rate (hp["learning_rate"]) over the
    config.learning_rate the optimizer was built with."""
    if "learning_rate" not in hp:
        return updates
    scale = hp["learning_rate"] / config.learning_rate
    return jax.tree.map(lambda u: u * scale, updates)


def _apply_updates(state: TrainState, updates, opt_state, ema_decay: float) -> TrainState:
    """The state one step on: its parameters updated, and its weight average with them."""
    params = optax.apply_updates(state.params, updates)
    ema = None if state.ema is None else update_ema(state.ema, params, ema_decay)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)


def make_grads(model, num_batches: int, config=None, split=None):
    """grads(params, images, labels, key, l2, keep) -> (gradients, (loss, nll)) of
    loss_fn on one device's mini-batch: by hand with config.grad=manual
    (mnist_cnn/backprop.py), else by jax.grad on the whole batch or accumulated over
    micro-batches of micro_batch_size(config.micro_batch, ...).
    split (sharding.BatchSplit): the mini-batch is the global one of `split.count`
    devices, constrained to be split over them; micro_batch_size decides on each
    device's share, and a pass takes that many images from each device: the same
    computation as one device with passes `split.count` times as large."""
    count = 1 if split is None else split.count
    constrain = (lambda x, dim=0: x) if split is None else split.constrain
    if config is not None and config.get("grad", "autodiff") == "manual":
        return lambda params, images, labels, *rest: _manual_grads(
            model, num_batches, params, constrain(images), constrain(labels), *rest)
    requested = 0 if config is None else config.get("micro_batch", 0)
    flops = networks.model_flops(model.layers)[1]

    def grads(params, images, labels, key, l2, keep):
        share = images.shape[0] // count
        micro = micro_batch_size(requested, share, flops_per_image=flops)
        if micro < share:
            return _accumulated_grads(model, num_batches, micro * count, params, images,
                                      labels, key, l2, keep, constrain)
        return _autodiff_grads(model, num_batches, params, constrain(images),
                               constrain(labels), key, l2, keep)

    return grads


def _manual_grads(model, num_batches, params, images, labels, key, l2, keep):
    if keep is not None:
        raise ValueError("config.grad=manual takes dropout rates from config.layers "
                         "only; a sweep over them runs its points one by one")
    loss, nll, grads = backprop.network_grads(
        params, model.layers, images, labels, l2, num_batches,
        dropout_mode=model.dropout_mode, conv_impl=model.conv_impl, dropout_key=key,
        with_nll=True)
    return grads, (loss, nll)


def _autodiff_grads(model, num_batches, params, images, labels, key, l2, keep):
    (loss, nll), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model, images, labels, key, l2, num_batches, True, keep)
    return grads, (loss, nll)


def _accumulated_grads(model, num_batches, micro, params, images, labels, key, l2, keep,
                       constrain=lambda x, dim=0: x):
    """The mini-batch's gradient as the mean of its micro-batches' (equal slices, so
    the same cost and gradient up to float rounding), accumulated in a scan, each
    with the dropout key folded with its index. Up to MAX_UNROLLED_SLICES slices
    (auto makes two of 128) the scan is unrolled: XLA's CPU runtime then runs the
    slices' independent operations side by side on its threads, +8-12% at
    mini-batch 128 (docs/benchmarks.md). constrain(x, dim): the slices' layout over a
    device mesh (make_grads)."""
    k = images.shape[0] // micro
    xs = constrain(images.reshape(k, micro, *images.shape[1:]), 1)
    ys = constrain(labels.reshape(k, micro), 1)

    def body(acc, part):
        i, x, y = part
        grads, (loss, nll) = _autodiff_grads(model, num_batches, params, x, y,
                                             jax.random.fold_in(key, i), l2, keep)
        return jax.tree.map(jnp.add, acc, (grads, loss, nll)), None

    zero = jnp.zeros((), jnp.float32)
    acc = (jax.tree.map(jnp.zeros_like, params), zero, zero)
    (grads, loss, nll), _ = lax.scan(body, acc, (jnp.arange(k), xs, ys),
                                     unroll=k <= MAX_UNROLLED_SLICES)
    grads = jax.tree.map(lambda g: g / k, grads)
    return grads, (loss / k, nll / k)


def make_train_chunk(model, tx, config, num_batches: int, stacked: bool = False):
    """Returns jitted chunk(state, images_u8, labels, order, start, num_steps) ->
    (state, per-step losses, per-step log-likelihoods), both of shape (num_steps,).
    `order` is None for network3's fixed order, else the epoch's permutation.
    stacked: the state has a leading member axis (and `order` too); the scan is vmapped
    and losses come back as (members, num_steps)."""
    return partial(jax.jit, static_argnames=("num_steps",), donate_argnums=(0,))(
        chunk_fn(model, tx, config, num_batches, stacked))


def chunk_fn(model, tx, config, num_batches: int, stacked: bool = False, axis_name=None,
             split=None):
    """The pure function behind make_train_chunk. axis_name: it runs under pmap, one
    device's share: every device builds the same global mini-batch (and its random
    shifts) and trains on its slice [i*b, (i+1)*b), b = batch_size / devices.
    split: it runs under jit over a device mesh (make_grads)."""
    step = make_train_step(model, tx, config.l2, num_batches, axis_name, config, split)
    bs = config.batch_size
    shift = config.augment_shift
    rotate, zoom = config.augment_rotate, config.augment_scale
    elastic, sigma = config.augment_elastic, config.augment_elastic_sigma

    def per_device(x, y):
        if axis_name is None:
            return x, y
        b = bs // lax.axis_size(axis_name)
        at = lax.axis_index(axis_name) * b
        return lax.dynamic_slice_in_dim(x, at, b), lax.dynamic_slice_in_dim(y, at, b)

    def chunk(state, images, labels, order, start, num_steps, hp=None):
        def scan(state, order, hp=None):
            def body(state, i):
                pos = (start + i) * bs
                if order is None:
                    x = lax.dynamic_slice_in_dim(images, pos, bs)
                    y = lax.dynamic_slice_in_dim(labels, pos, bs)
                else:
                    idx = lax.dynamic_slice_in_dim(order, pos, bs)
                    x, y = images[idx], labels[idx]
                if shift:
                    key = jax.random.fold_in(jax.random.fold_in(state.key, 2), state.step)
                    x = augment.random_shift(key, x, shift)
                x = data.to_float(x)
                if rotate or zoom or elastic:
                    key = jax.random.fold_in(jax.random.fold_in(state.key, 3), state.step)
                    x = augment.random_warp(key, x[..., 0], rotate, zoom, elastic, sigma)[..., None]
                x, y = per_device(x, y)
                return step(state, x, y, hp)

            state, (losses, nlls) = lax.scan(body, state, jnp.arange(num_steps))
            return state, losses, nlls

        if not stacked:
            return scan(state, order, hp)
        axes = (0, None if order is None else 0, None if hp is None else 0)
        return jax.vmap(scan, in_axes=axes)(state, order, hp)

    return chunk


def eval_views(shifts: int):
    """The (dy, dx) shifts test-time augmentation averages over: the image itself, then
    for s = 1..shifts the book's four directions (down, up, right, left) by s pixels."""
    return [(0, 0)] + [(s * dy, s * dx) for s in range(1, shifts + 1)
                       for dy, dx in augment.BOOK_SHIFTS]


def eval_warps(rotate: float = 0.0, zoom: float = 0.0):
    """The (degrees, zoom factor) views test-time augmentation adds to eval_views: the
    image rotated by +rotate and -rotate degrees about its centre (rotate > 0), then
    zoomed by 1 - zoom and 1 + zoom (zoom > 0); bilinear, as the training's random
    rotations and zooms (augment.affine)."""
    warps = [(rotate, 1.0), (-rotate, 1.0)] if rotate else []
    return warps + ([(0.0, 1.0 - zoom), (0.0, 1.0 + zoom)] if zoom else [])


def num_views(shifts: int, rotate: float = 0.0, zoom: float = 0.0) -> int:
    return len(eval_views(shifts)) + len(eval_warps(rotate, zoom))


def make_predict(model, eval_batch_size: int, stacked: bool = False, shifts: int = 0,
                 rotate: float = 0.0, zoom: float = 0.0):
    """Returns jitted predict(params, images_u8, keep=None) -> softmax probabilities
    (N, 10), or (members, N, 10) for stacked params; evaluated in batches of
    eval_batch_size. keep: a vmapped sweep's dropout keep probabilities (traced_hp's
    "keep", one per member), for network3's (1-p) scaling at evaluation.
    shifts, rotate, zoom: test-time augmentation (config.eval_shifts, eval_rotate,
    eval_zoom): the probabilities are the mean of the softmax over eval_views(shifts),
    each image shifted with the vacated pixels zeroed (augment.shift_image), and
    eval_warps(rotate, zoom), each image rotated or zoomed (augment.affine); all 0: the
    image alone."""
    views, warps = eval_views(shifts), eval_warps(rotate, zoom)

    def probs(params, images, keep=None):
        n = images.shape[0]
        bs = min(eval_batch_size, n)
        pad = (-n) % bs
        xs = jnp.pad(images, ((0, pad), (0, 0), (0, 0))).reshape(-1, bs, *images.shape[1:])
        kw = {} if keep is None else dict(keep_probs=keep)
        soft = lambda x: jax.nn.softmax(
            model.apply({"params": params}, x, train=False, **kw))
        one = lambda x: soft(data.to_float(x))
        def batch(x):
            if len(views) == 1 and not warps:
                return one(x)
            total = sum(one(augment.shift_image(x, dy, dx)) for dy, dx in views)
            flat = data.to_float(x)[..., 0]
            for degrees, scale in warps:
                theta = jnp.full((x.shape[0],), degrees * jnp.pi / 180, jnp.float32)
                scales = jnp.full((x.shape[0],), scale, jnp.float32)
                total = total + soft(augment.affine(flat, theta, scales)[..., None])
            return total / (len(views) + len(warps))
        return lax.map(batch, xs).reshape(-1, 10)[:n]

    if not stacked:
        return jax.jit(probs)
    return jax.jit(lambda params, images, keep=None: jax.vmap(probs, in_axes=(0, None, 0))(
        params, images, keep))


def make_calibrate(model, batch_size: int = 500, stacked: bool = False):
    """Returns jitted calibrate(params, images_u8) -> params with every batch-norm
    layer's `bn_mean` / `bn_var` set to the population moments of `images` (all of
    them, in batches of `batch_size` for memory and a last smaller one; the batches'
    means and mean squares averaged by size, so the batching does not change the result
    beyond rounding). Each batch passes through the network as in training, minus the
    random augmentation: earlier batch-norm layers normalise by that batch's moments
    (precise BN as Wu & Johnson 2021 define it; dropout acts on FC inputs only, after
    every conv layer). Calibrating twice gives what calibrating once does. stacked:
    params with a leading member axis, each member calibrated on the same images."""

    def calibrate(params, images):
        def moments(x):
            _, inter = model.apply({"params": params}, data.to_float(x), train=True,
                                   rngs={"dropout": jax.random.PRNGKey(0)},
                                   mutable=["intermediates"])
            return {name: v["bn_moments"][0] for name, v in inter["intermediates"].items()
                    if "bn_moments" in v}

        n = images.shape[0]
        bs = min(batch_size, n)
        full = n - n % bs
        parts = [(full, jax.tree.map(lambda m: jnp.mean(m, 0), lax.map(
            moments, images[:full].reshape(-1, bs, *images.shape[1:]))))]
        if full < n:   # the remainder, weighted by its size
            parts.append((n - full, moments(images[full:])))
        sums = jax.tree.map(lambda *ms: sum(k * m for (k, _), m in zip(parts, ms)) / n,
                            *[m for _, m in parts])
        out = dict(params)
        for name, (mean, mean_sq) in sums.items():
            layer = dict(out[name])
            layer["bn_mean"] = mean
            layer["bn_var"] = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            out[name] = layer
        return out

    if not stacked:
        return jax.jit(calibrate)
    return jax.jit(jax.vmap(calibrate, in_axes=(0, None)))


def accuracy(probabilities, labels) -> float:
    """Fraction of argmax predictions equal to labels (host-side, numpy)."""
    import numpy as np
    return float(np.mean(np.argmax(np.asarray(probabilities), -1) == np.asarray(labels)))


def best_epoch(validation_accuracies) -> int:
    """Index of the best validation accuracy; a later tie wins, as network3's `>=`."""
    best = 0
    for i, acc in enumerate(validation_accuracies):
        if acc >= validation_accuracies[best]:
            best = i
    return best
