"""dbl_conv: two conv-pool layers (20 then 40 maps, 5x5, 2x2 max-pool) + FC 100 + softmax.

network3: sigmoid, mini-batch 10, eta 0.1, 60 epochs, no regularisation. Book: 99.06%.
experiments/dbl_conv_tanh.py and dbl_conv_relu.py change the activation.

    python run.py --config=experiments/dbl_conv.py --workdir=runs/dbl_conv

Expected: 98.90% test at the best-validation epoch; 40 min on a 2-core AMD EPYC (two
runs sharing the cores).
"""

from mnist_cnn.config import base_config, conv_pool, fc, softmax


def get_config(activation="sigmoid"):
    c = base_config()
    c.name = "dbl_conv" if activation == "sigmoid" else f"dbl_conv_{activation}"
    c.layers = (conv_pool(20, kernel=5, activation=activation),
                conv_pool(40, kernel=5, activation=activation),
                fc(100, activation=activation), softmax(10))
    c.learning_rate = 0.1
    return c
