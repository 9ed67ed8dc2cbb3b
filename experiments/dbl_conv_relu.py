"""dbl_conv_relu: dbl_conv with rectified linear units and L2 regularisation.

network3: ReLU everywhere, mini-batch 10, eta 0.03, lambda 0.1 (the code's value; the
text says 0.01 in one place), 60 epochs. Book: 99.23%.

    python run.py --config=experiments/dbl_conv_relu.py --workdir=runs/dbl_conv_relu

Measured here (seed 0, the command above, 2-core AMD EPYC CPU, jax 0.10.2, two runs sharing the 2 cores):
test 98.97% at the best-validation epoch 32 (validation 99.02%), final epoch 98.98%; 60 epochs, 3.0M images, wall time 38 min.
Seed 1 (--config.seed=1): test 99.17% at epoch 27 (validation 99.07%); seed 2: test 99.10%
at epoch 26 (validation 99.19%). The book's protocol, best validation of three runs, keeps
seed 2: 99.10%.
"""

from experiments import dbl_conv

BOOK_ACCURACY = 99.23
MEASURED = 98.97


def get_config():
    c = dbl_conv.get_config(activation="relu")
    c.learning_rate = 0.03
    c.l2 = 0.1
    return c
