"""modern: the chapter's layer types trained the way a 2026 engineer would.

Beyond the book. Same building blocks as dbl_conv_relu (two 5x5 conv + 2x2 max-pool
layers, an FC layer, softmax), wider (32 and 64 feature maps, FC 1024), He init,
Nesterov momentum 0.9, a one-cycle learning rate, mini-batch 128 shuffled every epoch,
random shifts of up to 2 pixels on the fly, inverted dropout on the FC and softmax
inputs. Targets (issue 4): a single network >= 99.67% test (the book's five-network
ensemble) with at most 10 million training images; an ensemble >= 99.75%.

    python run.py --config=experiments/modern.py --workdir=runs/modern
    python run.py --config=experiments/modern.py:members=5 --workdir=runs/modern_ens5

Variants: epochs=N (default 40), members=K (an ensemble of K, vmapped, plurality vote),
vote=mean_softmax, fc=N (FC width, default 1024), p=P (dropout, default 0.5), rot=D and
zoom=S (random rotations of up to D degrees and zooms by [1-S, 1+S] on the fly; default 0),
bn=1 (batch normalisation in every conv layer, population moments after each epoch),
deep=1 (four conv layers: 5x5 32 + 3x3 32 + pool, 3x3 64 + 3x3 64 + pool; VALID, so
28 -> 24 -> 22 -> 11 -> 9 -> 7 -> 3), k1=K (the first conv's kernel, default 5; with
deep=1, k1=3 gives 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 and k1=7 gives 28 -> 22 -> 20 ->
10 -> 8 -> 6 -> 3: committee members that see the image through other receptive
fields), pool=P (the 2x2 pooling: max, the default, or l2, the chapter's L2 pooling:
the square root of the sum of squares over each window, before BN and ReLU), tta=K
(evaluation averages the softmax over each image and its shifts by 1..K pixels in the
four directions: config.eval_shifts),
ttarot=D and ttazoom=Z (evaluation also averages over each image rotated by +-D degrees
and zoomed by 1 -+ Z: config.eval_rotate, config.eval_zoom),
elastic=A and esigma=S (Simard et al. 2003's elastic distortions on the fly: a random
displacement field smoothed by a Gaussian of std S pixels, default 4, scaled by A),
ema=D (evaluate an exponential moving average of the weights, decay D per step;
metrics.jsonl keeps the raw weights' accuracies beside it), trainval=1 (train on the
50,000 training and the 10,000 validation images, config.train_on_validation: a recipe
chosen on validation before, retrained on all 60,000 and reported at its last epoch),
width=W (every image's digit stretched to a W-pixel-wide bounding box, train and test
alike: config.width_norm, Ciresan et al. 2012's preprocessing that makes committee
members differ), deskew=1 (every image's slant sheared upright, train and test alike:
config.deskew, the deslanting of LeCun et al. 1998 and of Meier et al. 2011's committees),
allconv=1 (another family: no pooling and no FC layer, 3x3, 3x3 and 5x5 stride-2 SAME
convs with 32 then 64 maps, a 4x4 conv to 128 maps, softmax; Springenberg et al. 2015's
strided convolutions in place of pooling, in the layer sizes of C. Deotte's 2018 Kaggle
MNIST network; about twice the four-conv network's cost).

Measured here (seed 0, 2-core Intel Xeon CPU, jax 0.10.2; the machine shared with other
work, so the wall time is not a speed figure): test 99.57% at the best-validation epoch
29 (validation 99.56%), final epoch 99.63%; 40 epochs, 2.0M images (a fifth of the
book's dropout network), 22 min. Below the 99.67% target. An earlier setting (FC 256,
dropout 0.25, 30 epochs) gave 99.53% (validation 99.56% at epoch 24). Fifth session, on
one core of the same CPU: `bn=1,rot=10,zoom=0.1` 99.63% (validation 99.55% at epoch 32),
`deep=1,bn=1,rot=10,zoom=0.1` 99.55% (validation 99.69% at epoch 30); 40 epochs each.
Sixth session, one NVIDIA H100: `members=10,bn=1,rot=10,zoom=0.1` (65 s) votes to 99.64%
(validation 99.66% at epoch 35); its members reach 99.52-99.65% alone at their
best-validation epochs, the best-validation member 99.56%. `bn=1,rot=10,zoom=0.1,tta=1`
(one core, the same training as without tta): 99.64% at best validation 99.60% (epoch
31), 99.67% at the last epoch; seeds 1, 2, 3: 99.56%, 99.58%, 99.61% at best validation.
Seventh session, one core each: `bn=1,rot=10,zoom=0.1,tta=1,epochs=80` 99.65% (validation
99.63% at epoch 68); with `elastic=36,esigma=6`, 40 epochs, 99.64% (validation 99.65%),
80 epochs 99.59% (validation 99.73%); `deep=1,bn=1,rot=10,zoom=0.1,elastic=36,esigma=6,
tta=1` 99.66% (validation 99.58% at epoch 40). Eighth session, one core each: the same
with `ema=0.999`, seeds 1 and 2: 99.63% (validation 99.54%, epoch 40) and 99.57%
(validation 99.61%, epoch 16); the three seeds' committee (`--mode=vote`) 99.70%.
Tenth session, one core: `deep=1,bn=1,rot=10,zoom=0.1,elastic=36,esigma=6,tta=1,trainval=1`
(all 60,000 training images, the last epoch reported) 99.71%, 2.4M images.
Thirteenth session, one core each, the same with `width=14/18/12/16` (seeds 7-10):
99.62 / 99.69 / 99.58 / 99.66%; with six original-image seeds they vote 99.71%.
Fourteenth session: `width=10/20` (seeds 11, 12) 99.65 / 99.61%; the twelve (original and
widths 10-20) vote 99.70%. Rotated/zoomed test-time views (ttarot=5, ttazoom=0.05 and
others) did not lower a 50,000-image network's validation cross-entropy (seed 13:
99.59% test, validation 99.61%).
Fifteenth session: `k1=3` seeds 21, 23: 99.61 / 99.73%; `k1=7` seeds 22, 24, 26:
99.63 / 99.66 / 99.72%; with the twelve, 17 networks vote 99.71%.
Sixteenth session: `k1=7,epochs=80` seeds 31, 32: 99.70 / 99.71%; `k1=7,pool=l2` seeds
33, 34: 99.69 / 99.63%; with the seventeen, 21 networks vote 99.71%.
Seventeenth session: `k1=7,deskew=1` seeds 41-46: 99.68 / 99.62 / 99.57 / 99.72 / 99.60 /
99.64%; with the 21, 27 networks vote 99.74% (26 errors).
Eighteenth session: six more seeds (47-52) 99.56-99.68%; the 33 vote 99.73% (27 errors).
Nineteenth session: `k1=7,deskew=1,width=W`, widths 14/16/18/12/10/20, seeds 61-66:
99.68 / 99.66 / 99.66 / 99.64 / 99.57 / 99.59%; with P's 27, 33 networks vote 99.73%.
Twentieth session: `allconv=1,bn=1,p=0.4,...,epochs=25` seeds 71, 72 (raw digits) 99.73 /
99.73%, seeds 73, 74 (`deskew=1`) 99.67 / 99.70%, 1.5M images each; with P's 27, 31
networks vote 99.75% (25 errors), the committee fixed in advance.
"""

from experiments import dbl_conv_relu
from mnist_cnn.config import ConfigError, conv_pool, fc, parse_variant, softmax

BOOK_ACCURACY = None
MEASURED = 99.57


def recipe(c, epochs: int, learning_rate: float, warmup_epochs: float):
    """The training recipe the modern family and the speedrun share: He init, Nesterov
    momentum 0.9, a one-cycle learning rate, mini-batch 128, shuffled, no L2."""
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
    v = parse_variant(arg, epochs=40, members=1, vote="plurality", fc=1024, p=0.5, rot=0.0,
                      zoom=0.0, bn=0, deep=0, tta=0, elastic=0.0, esigma=4.0,
                      ema=0.0, trainval=0, width=0, ttarot=0.0, ttazoom=0.0, k1=5,
                      pool="max", deskew=0, allconv=0)
    c = recipe(dbl_conv_relu.get_config(), v["epochs"], learning_rate=0.05, warmup_epochs=2.0)
    c.name = "modern" if v["members"] == 1 else f"modern_ens{v['members']}"
    if v["allconv"] and v["deep"]:
        raise ConfigError("modern: deep=1 and allconv=1 are two different networks; pick one")
    if v["allconv"]:
        return _allconv(c, v)
    bn = bool(v["bn"])
    if v["deep"]:   # two convs a stage: 5x5, 3x3 + pool; 3x3, 3x3 + pool
        convs = (conv_pool(32, kernel=v["k1"], activation="relu", pool="none", batch_norm=bn),
                 conv_pool(32, kernel=3, activation="relu", pool=v["pool"], batch_norm=bn),
                 conv_pool(64, kernel=3, activation="relu", pool="none", batch_norm=bn),
                 conv_pool(64, kernel=3, activation="relu", pool=v["pool"], batch_norm=bn))
    else:
        convs = (conv_pool(32, kernel=v["k1"], activation="relu", pool=v["pool"], batch_norm=bn),
                 conv_pool(64, activation="relu", pool=v["pool"], batch_norm=bn))
    c.layers = convs + (
                fc(v["fc"], activation="relu", dropout=v["p"]), softmax(10, dropout=v["p"]))
    return _common(c, v)


def _allconv(c, v):
    """No pooling and no FC layer: 3x3, 3x3 and a 5x5 stride-2 conv (SAME) per stage,
    32 then 64 maps, a 4x4 conv to 128 maps, softmax (28 -> 26 -> 24 -> 12 -> 10 -> 8 ->
    4 -> 1); batch norm in every conv when bn=1; dropout p on the softmax inputs. Strided
    convolutions in place of pooling follow Springenberg et al. 2015 ("Striving for
    simplicity: the all convolutional net"); the layer sizes are those of a widely used
    Kaggle MNIST network (C. Deotte, 2018)."""
    if v["k1"] != 5 or v["pool"] != "max" or v["fc"] != 1024:
        raise ConfigError("modern: allconv=1 has no pooling, no FC layer and 3x3 first "
                          "kernels; drop k1=, pool= and fc= from the variant")
    bn = bool(v["bn"])
    relu = dict(activation="relu", pool="none", batch_norm=bn)
    c.layers = (conv_pool(32, kernel=3, **relu),
                conv_pool(32, kernel=3, **relu),
                conv_pool(32, kernel=5, stride=2, padding="SAME", **relu),
                conv_pool(64, kernel=3, **relu),
                conv_pool(64, kernel=3, **relu),
                conv_pool(64, kernel=5, stride=2, padding="SAME", **relu),
                conv_pool(128, kernel=4, **relu),
                softmax(10, dropout=v["p"]))
    return _common(c, v)


def _common(c, v):
    """The settings every modern network shares: augmentation, evaluation, members."""
    c.dropout_mode = "inverted"
    c.augment_shift = 2
    c.augment_rotate = v["rot"]
    c.augment_scale = v["zoom"]
    c.augment_elastic = v["elastic"]
    c.augment_elastic_sigma = v["esigma"]
    c.num_members = v["members"]
    c.vote = v["vote"]
    c.eval_shifts = v["tta"]
    c.eval_rotate = v["ttarot"]
    c.eval_zoom = v["ttazoom"]
    c.ema_decay = v["ema"]
    c.train_on_validation = bool(v["trainval"])
    c.width_norm = v["width"]
    c.deskew = bool(v["deskew"])
    return c
