"""dbl_conv_tanh: dbl_conv with tanh activations (conv.py: `dbl_conv(activation_fn=tanh)`).

Mini-batch 10, eta 0.1, 60 epochs. The book says only that tanh trains a little faster
and ends about where sigmoid does; it gives no number.

    python run.py --config=experiments/dbl_conv_tanh.py --workdir=runs/dbl_conv_tanh

Expected: 98.99% test at the best-validation epoch; 26 min on a 2-core AMD EPYC (shared
with other work).
"""

from experiments import dbl_conv


def get_config():
    return dbl_conv.get_config(activation="tanh")
