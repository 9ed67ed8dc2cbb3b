"""double_fc_dropout: two FC layers of 1000 ReLU units with dropout, expanded data.

network3 (conv.py `double_fc_dropout(0.5, 0.5, 0.5, ...)`): conv-pool 20 + conv-pool 40
(ReLU) + FC 1000 + FC 1000 (ReLU) + softmax, dropout 0.5 on the inputs of both FC layers
and of the softmax layer (network3's form: no rescaling in training, inputs scaled by
1-p at evaluation), mini-batch 10, eta 0.03, no L2, 40 epochs, expanded data. Book:
99.60%. The variant p sets the three dropout rates.

    python run.py --config=experiments/double_fc_dropout.py --workdir=runs/double_fc_dropout

Expected: 99.58% test at the best-validation epoch, 10M images in 190 s on one NVIDIA H200.
"""

from experiments import expanded_data
from mnist_cnn.config import fc, parse_variant, softmax


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
