"""omit_fc: the chapter's problem "omit the fully-connected layer".

One conv-pool layer (20 maps, 5x5, 2x2 max-pool) straight into the softmax layer;
sigmoid, mini-batch 10, eta 0.1, 60 epochs (network3's conv.py: `omit_FC`). The book
poses it as a problem and publishes no number.

    python run.py --config=experiments/omit_fc.py --workdir=runs/omit_fc

Expected: 98.34% test at the best-validation epoch; 16 min on a 2-core AMD EPYC (two
runs sharing the cores).
"""

from mnist_cnn.config import base_config, conv_pool, softmax


def get_config():
    c = base_config()
    c.name = "omit_fc"
    c.layers = (conv_pool(20, kernel=5, activation="sigmoid"), softmax(10))
    c.learning_rate = 0.1
    return c
