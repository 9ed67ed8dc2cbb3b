"""double_fc_dropout: two FC layers of 1000 ReLU units with dropout, expanded data.

network3 (conv.py `double_fc_dropout(0.5, 0.5, 0.5, ...)`): conv-pool 20 + conv-pool 40
(ReLU) + FC 1000 + FC 1000 (ReLU) + softmax, dropout 0.5 on the inputs of both FC layers
and of the softmax layer (network3's form: no rescaling in training, inputs scaled by
1-p at evaluation), mini-batch 10, eta 0.03, no L2, 40 epochs, expanded data. Book: 99.60%.

    python run.py --config=experiments/double_fc_dropout.py --workdir=runs/double_fc_dropout
    python run.py --config=experiments/double_fc_dropout.py:p=0.3 --workdir=runs/dfd_p03

Measured on one NVIDIA H200 (third session, jax 0.11.2, seed 0): 99.58% (best validation
99.61% at epoch 36), 10M images in 190 s. 40 epochs of 250,000 images through 2 x 1000
FC units does not fit a 2-core CPU session.
"""

from experiments import expanded_data
from mnist_cnn.config import fc, parse_variant, softmax

BOOK_ACCURACY = 99.60
MEASURED = 99.58


def get_config(arg="p=0.5"):
    p = parse_variant(arg, p=0.5)["p"]
    c = expanded_data.get_config("n=1000")
    c.name = "double_fc_dropout" if p == 0.5 else f"double_fc_dropout_p{p}"
    c.layers = c.layers[:2] + (fc(1000, activation="relu", dropout=p),
                               fc(1000, activation="relu", dropout=p),
                               softmax(10, dropout=p))
    c.num_epochs = 40
    c.l2 = 0.0
    return c
