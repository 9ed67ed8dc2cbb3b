"""allconv: the all-convolutional network, the most accurate single network measured.

No pooling and no FC layer: 3x3, 3x3 and 5x5 stride-2 SAME convs with 32 maps, the
same with 64, a 4x4 conv to 128 maps, softmax with inverted dropout 0.4; batch norm in
every conv (Springenberg et al. 2015's strided convolutions in place of pooling, in the
layer sizes of C. Deotte's 2018 Kaggle MNIST network). Twice the four-conv network's
cost an image, so 25 epochs (1.5M images); otherwise four_conv_elastic's recipe:
rotations, zooms, elastic distortions, test-time shifts, trained on all 60,000 training
images, the last epoch reported.

    python run.py --config=experiments/allconv.py --workdir=runs/allconv --config.seed=71

Expected: 99.73% test (seeds 71 and 72; on deskewed digits, --config.deskew=True, seeds
73 and 74: 99.67% / 99.70%); 50-53 min on one core of a 2-core AMD EPYC.
"""

from experiments import four_conv_elastic, modern


def get_config():
    c = four_conv_elastic.elastic(modern.get_config("allconv=1,bn=1"))
    c.name = "allconv"
    c.num_epochs = 25
    c.layers[-1].dropout = 0.4
    return c
