"""speedrun: 99% mean test accuracy in the least wall-clock time on a 2-core CPU.

The chapter's layer types in the order of tuomaso/train_mnist_fast's record (conv 5x5,
max-pool, ReLU; conv 3x3, max-pool, ReLU; FC, ReLU; softmax), narrower (10 and 20 maps,
FC 100: 0.38M multiply-adds an image against the record's 1.24M), trained as the record
trains but for two epochs: all 60,000 training images, shuffled, in mini-batches of 128
(the record: 256, one epoch), Adam (betas 0.7, 0.9), a one-cycle learning rate peaking
at 0.01 after 30% of the steps, He init; evaluated once, at the end; no checkpoints,
TensorBoard files or figures. Chosen on validation (train_size 50,000, seeds 100-109:
98.98% mean; results/2026-12-01-speedrun).

    python benchmarks/speedrun.py --seeds=10

Expected: 99.06% mean test accuracy over seeds 0-9 (each 98.95 to 99.18); 10.2-11.7 s
median from process start to exit with no compilation cache, 8.1-8.4 s with a warm one
(two measurements), on a 2-core Intel Xeon shared with other jobs.
"""

from experiments import dbl_conv_relu
from mnist_cnn.config import conv_pool, fc, softmax


def get_config():
    c = dbl_conv_relu.get_config()
    c.name = "speedrun"
    c.layers = (conv_pool(10, activation="relu"),
                conv_pool(20, kernel=3, activation="relu"),
                fc(100, activation="relu"), softmax(10))
    c.init = "modern"
    c.num_epochs = 2
    c.eval_every = 2             # evaluated once, at the end
    c.batch_size = 128
    c.optimizer = "adam"
    c.adam_b1, c.adam_b2 = 0.7, 0.9
    c.learning_rate = 0.01
    c.schedule = "onecycle"
    c.warmup_epochs = 0.6        # 30% of the steps, as the record's one-cycle
    c.l2 = 0.0
    c.shuffle = True
    c.train_on_validation = True
    c.keep_checkpoints = 0
    c.tensorboard = False
    c.plots = False
    return c
