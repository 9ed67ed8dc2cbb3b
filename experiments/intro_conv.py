"""intro_conv: section 6.1's first convolutional network.

3 feature maps of 5x5 local receptive fields, 2x2 max-pooling, and 10 softmax neurons
fully connected to the 3x12x12 pooled layer. The book draws this network but publishes
no accuracy or hyperparameters; it is trained like `shallow` (sigmoid, eta 0.1,
mini-batch 10, 60 epochs).

    python run.py --config=experiments/intro_conv.py --workdir=runs/intro_conv

Expected: 97.74% test at the best-validation epoch; 8 min on a 2-core AMD EPYC (two runs
sharing the cores).
"""

from mnist_cnn.config import base_config, conv_pool, softmax


def get_config():
    c = base_config()
    c.name = "intro_conv"
    c.layers = (conv_pool(3, kernel=5, pool="max", activation="sigmoid"), softmax(10))
    c.learning_rate = 0.1
    return c
