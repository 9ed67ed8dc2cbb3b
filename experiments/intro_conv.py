"""intro_conv: section 6.1's first convolutional network.

3 feature maps of 5x5 local receptive fields, 2x2 max-pooling, and 10 softmax output
neurons fully connected to the 3x12x12 pooled layer. The book draws this network but
publishes no accuracy or hyperparameters for it; we train it like `shallow` (eta 0.1,
mini-batch 10, sigmoid, 60 epochs).

    python run.py --config=experiments/intro_conv.py --workdir=runs/intro_conv

Measured here (seed 0, the command above, 2-core AMD EPYC CPU, jax 0.10.2, two runs sharing the 2 cores):
test 97.74% at the best-validation epoch 21 (validation 97.90%), final epoch 97.60%; 60 epochs, 3.0M images, wall time 8 min.
"""

from mnist_cnn.config import base_config, conv_pool, softmax

BOOK_ACCURACY = None   # the book gives no number for this network
MEASURED = 97.74


def get_config():
    c = base_config()
    c.name = "intro_conv"
    c.layers = (conv_pool(3, kernel=5, pool="max", activation="sigmoid"), softmax(10))
    c.learning_rate = 0.1
    return c
