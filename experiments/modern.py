"""modern: the chapter's building blocks trained with today's defaults.

Two 5x5 conv + 2x2 max-pool layers (32, 64 maps, ReLU), FC 1024 (ReLU), softmax;
inverted dropout 0.5 on the FC and softmax inputs; He init, Nesterov momentum 0.9, a
one-cycle learning rate (peak 0.05 after 2 epochs), mini-batch 128 shuffled every
epoch, random shifts of up to 2 pixels, 40 epochs (2.0M images).

    python run.py --config=experiments/modern.py --workdir=runs/modern

Expected: 99.57% test at the best-validation epoch; 22 min on a 2-core Intel Xeon.

Variants change the network's structure (--config=experiments/modern.py:bn=1,deep=1);
every other setting is a config field (--config.augment_rotate=10, --config.eval_shifts=1,
--config.num_epochs=80, ...):
  bn=1       batch norm in every conv layer
  deep=1     four conv layers: 5x5 32, 3x3 32 + pool, 3x3 64, 3x3 64 + pool
  allconv=1  no pooling, no FC layer: strided convolutions (experiments/allconv.py)
  k1=K       the first conv's kernel (default 5)
  pool=l2    the chapter's L2 pooling in place of max-pooling
  fc=N       the FC layer's width (default 1024)
  members=K  K networks trained together as one vmapped program, voting (config.vote)
"""

from experiments import dbl_conv_relu
from mnist_cnn.config import ConfigError, conv_pool, fc, parse_variant, softmax

# Keys that only set config fields, with the flags that set them now.
RENAMED = dict(
    epochs="--config.num_epochs={v}", vote="--config.vote={v}",
    p="--config.layers[i].dropout={v} (the FC and softmax layers)",
    rot="--config.augment_rotate={v}", zoom="--config.augment_scale={v}",
    elastic="--config.augment_elastic={v}", esigma="--config.augment_elastic_sigma={v}",
    tta="--config.eval_shifts={v}", ttarot="--config.eval_rotate={v}",
    ttazoom="--config.eval_zoom={v}", ema="--config.ema_decay={v}",
    trainval="--config.train_on_validation=True", width="--config.width_norm={v}",
    deskew="--config.deskew=True")


def recipe(c, epochs: int, learning_rate: float, warmup_epochs: float):
    """The modern family's training recipe: He init, Nesterov momentum 0.9, a one-cycle
    learning rate, mini-batch 128, shuffled, no L2."""
    c.init = "modern"
    c.num_epochs = epochs
    c.batch_size = 128
    c.learning_rate = learning_rate
    c.momentum = 0.9
    c.nesterov = True
    c.schedule = "onecycle"
    c.warmup_epochs = warmup_epochs
    c.l2 = 0.0
    c.shuffle = True
    return c


def get_config(arg=""):
    v = parse_variant(arg, RENAMED, members=1, fc=1024, bn=0, deep=0, k1=5, pool="max",
                      allconv=0)
    c = recipe(dbl_conv_relu.get_config(), 40, learning_rate=0.05, warmup_epochs=2.0)
    c.name = "modern" if v["members"] == 1 else f"modern_ens{v['members']}"
    c.layers = _layers(v)
    c.dropout_mode = "inverted"
    c.augment_shift = 2
    c.num_members = v["members"]
    return c


def _layers(v):
    bn = bool(v["bn"])
    if v["allconv"]:
        if v["deep"]:
            raise ConfigError("modern: deep=1 and allconv=1 are two different networks; "
                              "pick one")
        return _allconv_layers(v, bn)
    if v["deep"]:   # two convs a stage: 5x5, 3x3 + pool; 3x3, 3x3 + pool
        convs = (conv_pool(32, kernel=v["k1"], activation="relu", pool="none", batch_norm=bn),
                 conv_pool(32, kernel=3, activation="relu", pool=v["pool"], batch_norm=bn),
                 conv_pool(64, kernel=3, activation="relu", pool="none", batch_norm=bn),
                 conv_pool(64, kernel=3, activation="relu", pool=v["pool"], batch_norm=bn))
    else:
        convs = (conv_pool(32, kernel=v["k1"], activation="relu", pool=v["pool"], batch_norm=bn),
                 conv_pool(64, activation="relu", pool=v["pool"], batch_norm=bn))
    return convs + (fc(v["fc"], activation="relu", dropout=0.5), softmax(10, dropout=0.5))


def _allconv_layers(v, bn):
    """No pooling and no FC layer: 3x3, 3x3 and a 5x5 stride-2 conv (SAME) per stage,
    32 then 64 maps, a 4x4 conv to 128 maps, softmax (28 -> 26 -> 24 -> 12 -> 10 -> 8 ->
    4 -> 1); dropout on the softmax inputs. Strided convolutions in place of pooling
    follow Springenberg et al. 2015 ("Striving for simplicity: the all convolutional
    net"); the layer sizes are those of a widely used Kaggle MNIST network (C. Deotte,
    2018)."""
    if v["k1"] != 5 or v["pool"] != "max" or v["fc"] != 1024:
        raise ConfigError("modern: allconv=1 has no pooling, no FC layer and 3x3 first "
                          "kernels; drop k1=, pool= and fc= from the variant")
    relu = dict(activation="relu", pool="none", batch_norm=bn)
    return (conv_pool(32, kernel=3, **relu),
            conv_pool(32, kernel=3, **relu),
            conv_pool(32, kernel=5, stride=2, padding="SAME", **relu),
            conv_pool(64, kernel=3, **relu),
            conv_pool(64, kernel=3, **relu),
            conv_pool(64, kernel=5, stride=2, padding="SAME", **relu),
            conv_pool(128, kernel=4, **relu),
            softmax(10, dropout=0.5))
