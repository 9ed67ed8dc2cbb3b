"""shallow: the chapter's baseline, one hidden layer of 100 sigmoid neurons.

network3: FullyConnectedLayer(784, 100) + SoftmaxLayer(100, 10), mini-batch 10,
eta 0.1, 60 epochs, no regularisation. Book: 97.80%.

    python run.py --config=experiments/shallow.py --workdir=runs/shallow

Measured here (seed 0, the command above, 2-core AMD EPYC CPU, jax 0.10.2, two runs sharing the 2 cores):
test 97.80% at the best-validation epoch 57 (validation 97.74%), final epoch 97.82%; 60 epochs, 3.0M images, wall time 1 min.
"""

from mnist_cnn.config import base_config, fc, softmax

BOOK_ACCURACY = 97.80
MEASURED = 97.80


def get_config():
    c = base_config()
    c.name = "shallow"
    c.layers = (fc(100, activation="sigmoid"), softmax(10))
    c.learning_rate = 0.1
    return c
