"""shallow: the chapter's baseline, one hidden layer of 100 sigmoid neurons.

network3: FullyConnectedLayer(784, 100) + SoftmaxLayer(100, 10), mini-batch 10, eta 0.1,
60 epochs, no regularisation. Book: 97.80%.

    python run.py --config=experiments/shallow.py --workdir=runs/shallow

Expected: 97.80% test at the best-validation epoch; 1 min on a 2-core AMD EPYC.
"""

from mnist_cnn.config import base_config, fc, softmax


def get_config():
    c = base_config()
    c.name = "shallow"
    c.layers = (fc(100, activation="sigmoid"), softmax(10))
    c.learning_rate = 0.1
    return c
