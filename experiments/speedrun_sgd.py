"""speedrun_sgd: the SGD speedrun recipe that experiments/speedrun.py replaced.

The chapter's layer types (two conv-pool layers, an FC layer, softmax) made narrow (8
and 16 feature maps, FC 100) so an image costs about a third of dbl_conv_relu's FLOPs,
trained the modern way: ReLU, He init, Nesterov momentum 0.9, a one-cycle learning rate
(peak 0.1), mini-batch 128 shuffled every epoch, 4 epochs, no figures. Timed end to end:
process start, imports, data loading, compilation, training, evaluation, checkpoints.

    python benchmarks/speedrun.py --config=experiments/speedrun_sgd.py --seeds=5

Expected: 99.04% test, the median of seeds 0-4, in 11.7 s median from process start to
exit on a 2-core Intel Xeon (no compilation cache).
"""

from experiments import dbl_conv_relu, modern
from mnist_cnn.config import conv_pool, fc, softmax


def get_config():
    c = modern.recipe(dbl_conv_relu.get_config(), 4, learning_rate=0.1, warmup_epochs=0.3)
    c.name = "speedrun_sgd"
    c.layers = (conv_pool(8, activation="relu"), conv_pool(16, activation="relu"),
                fc(100, activation="relu"), softmax(10))
    c.plots = False
    return c
