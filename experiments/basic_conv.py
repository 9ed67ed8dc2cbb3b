"""basic_conv: one conv-pool layer (20 maps, 5x5, 2x2 max-pool) + FC 100 + softmax.

network3: sigmoid, mini-batch 10, eta 0.1, 60 epochs, no regularisation. Book: 98.78%.

    python run.py --config=experiments/basic_conv.py --workdir=runs/basic_conv

Expected: 98.70% test at the best-validation epoch; 21 min on a 2-core AMD EPYC (two
runs sharing the cores).
"""

from mnist_cnn.config import base_config, conv_pool, fc, softmax


def get_config():
    c = base_config()
    c.name = "basic_conv"
    c.layers = (conv_pool(20, kernel=5, activation="sigmoid"), fc(100, activation="sigmoid"),
                softmax(10))
    c.learning_rate = 0.1
    return c
