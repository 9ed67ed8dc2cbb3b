"""basic_conv: one conv-pool layer (20 maps, 5x5, 2x2 max-pool) + FC 100 + softmax.

network3: sigmoid, mini-batch 10, eta 0.1, 60 epochs, no regularisation. Book: 98.78%.

    python run.py --config=experiments/basic_conv.py --workdir=runs/basic_conv

Measured here (seed 0, the command above, 2-core AMD EPYC CPU, jax 0.10.2, two runs sharing the 2 cores):
test 98.70% at the best-validation epoch 60 (validation 98.75%), final epoch 98.70%; 60 epochs, 3.0M images, wall time 21 min.
"""

from mnist_cnn.config import base_config, conv_pool, fc, softmax

BOOK_ACCURACY = 98.78
MEASURED = 98.70


def get_config():
    c = base_config()
    c.name = "basic_conv"
    c.layers = (conv_pool(20, kernel=5, activation="sigmoid"), fc(100, activation="sigmoid"),
                softmax(10))
    c.learning_rate = 0.1
    return c
