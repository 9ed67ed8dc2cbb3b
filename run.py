r"""Entry point: flags in, one call into the package (mnist_cnn/main.py).

    python run.py --config=experiments/dbl_conv_relu.py --workdir=runs/dbl_conv_relu
    python run.py --config=experiments/dbl_conv_relu.py --workdir=/tmp/quick \
        --config.num_epochs=1 --config.train_size=5000
    python run.py --list
    python run.py --helpshort        # the training flags; --helpfull: every mode's
"""

from mnist_cnn.main import run

if __name__ == "__main__":
    run()
