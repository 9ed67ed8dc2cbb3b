"""expanded_data: dbl_conv_relu with n ReLU units in the FC layer, on the expanded data.

network3 (conv.py `expanded_data(n)`): conv-pool 20 + conv-pool 40 (5x5, 2x2 max-pool,
ReLU) + FC n (ReLU) + softmax, mini-batch 10, eta 0.03, lambda 0.1, 60 epochs, on the
250,000 images of the book's expansion (each training image and its four 1-pixel
shifts, shuffled once). Book: n=100 99.37%, n=300 99.46%, n=1000 99.43%. The variant n
sets the FC width.

    python run.py --config=experiments/expanded_data.py:n=300 --workdir=runs/expanded_300

Expected: n=100 99.47% in 220 s on one NVIDIA H200; n=300 99.42%
in 56 min on one core of a 2-core Intel Xeon; n=1000 99.29% in 132 s on one NVIDIA H100
(15M training images each).
"""

from experiments import dbl_conv_relu
from mnist_cnn.config import fc, parse_variant, softmax


def get_config(arg="n=100"):
    n = parse_variant(arg, n=100)["n"]
    c = dbl_conv_relu.get_config()
    c.name = f"expanded_data_n{n}"
    c.expand_data = True
    c.layers = c.layers[:2] + (fc(n, activation="relu"), softmax(10))
    return c
