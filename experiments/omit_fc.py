"""omit_fc: the chapter's problem "omit the fully-connected layer".

One conv-pool layer (20 maps, 5x5, 2x2 max-pool) straight into the softmax layer;
sigmoid, mini-batch 10, eta 0.1, 60 epochs. The book poses it as a problem and
publishes no number (network3's conv.py: `omit_FC`).

    python run.py --config=experiments/omit_fc.py --workdir=runs/omit_fc

Measured here (seed 0, the command above, 2-core AMD EPYC CPU, jax 0.10.2, two runs sharing the 2 cores):
test 98.34% at the best-validation epoch 43 (validation 98.56%), final epoch 98.30%; 60 epochs, 3.0M images, wall time 16 min.
"""

from mnist_cnn.config import base_config, conv_pool, softmax

BOOK_ACCURACY = None
MEASURED = 98.34


def get_config():
    c = base_config()
    c.name = "omit_fc"
    c.layers = (conv_pool(20, kernel=5, activation="sigmoid"), softmax(10))
    c.learning_rate = 0.1
    return c
