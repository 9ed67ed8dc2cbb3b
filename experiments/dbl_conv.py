"""dbl_conv: two conv-pool layers (20 then 40 maps, 5x5, 2x2 max-pool) + FC 100 + softmax.

network3: sigmoid, mini-batch 10, eta 0.1, 60 epochs, no regularisation. Book: 99.06%.
`--config.layers[0].activation=tanh` etc. or experiments/dbl_conv_tanh.py for tanh.

    python run.py --config=experiments/dbl_conv.py --workdir=runs/dbl_conv

Measured here (seed 0, the command above, 2-core AMD EPYC CPU, jax 0.10.2, two runs sharing the 2 cores):
test 98.90% at the best-validation epoch 60 (validation 98.89%), final epoch 98.90%; 60 epochs, 3.0M images, wall time 40 min.
"""

from mnist_cnn.config import base_config, conv_pool, fc, softmax

BOOK_ACCURACY = 99.06
MEASURED = 98.90


def get_config(activation="sigmoid"):
    c = base_config()
    c.name = "dbl_conv" if activation == "sigmoid" else f"dbl_conv_{activation}"
    c.layers = (conv_pool(20, kernel=5, activation=activation),
                conv_pool(40, kernel=5, activation=activation),
                fc(100, activation=activation), softmax(10))
    c.learning_rate = 0.1
    return c
