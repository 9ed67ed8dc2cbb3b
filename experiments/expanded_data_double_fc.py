"""expanded_data_double_fc: expanded_data with two FC layers of n ReLU units.

network3 (conv.py `expanded_data_double_fc(n)`): conv-pool 20 + conv-pool 40 + FC n +
FC n + softmax, ReLU, mini-batch 10, eta 0.03, lambda 0.1, 60 epochs, expanded data.
Book: n=100 99.43%, n=300 99.48%, n=1000 99.47%.

    python run.py --config=experiments/expanded_data_double_fc.py:n=300 --workdir=runs/x2fc_300

Expected: n=100 99.27% in 59 min and n=300 99.40% in 71 min, each
on one core of a 2-core Intel Xeon; n=1000 99.41% in 164 s on one NVIDIA H100 (15M
training images each).
"""

from experiments import expanded_data
from mnist_cnn.config import fc, parse_variant, softmax


def get_config(arg="n=100"):
    n = parse_variant(arg, n=100)["n"]
    c = expanded_data.get_config(f"n={n}")
    c.name = f"expanded_data_double_fc_n{n}"
    c.layers = c.layers[:2] + (fc(n, activation="relu"), fc(n, activation="relu"),
                               softmax(10))
    return c
