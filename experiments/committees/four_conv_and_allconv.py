"""31 networks: 27 four-conv elastic networks seen through many views, and 4 all-convolutional ones.

Every member is trained on all 60,000 training images and evaluated at its last epoch
with the five 1-pixel shift views; the mean softmax votes. Members and rule were named
before the last four trained (recorded as committee S in
results/2026-11-27-allconv-committee/vote_S.json):

- experiments/four_conv_elastic.py, seeds 1-6;
- the same on digits width-normalised to 10-20 pixels (Ciresan et al. 2012), seeds 7-12;
- with a 3x3 first kernel (seeds 21, 23) or a 7x7 one (seeds 22, 24, 26);
- 7x7, trained 80 epochs (seeds 31, 32), or with L2 pooling (seeds 33, 34);
- 7x7 on deskewed digits (seeds 41-46);
- experiments/committees/allconv.py's four networks.

    python run.py --mode=vote --config=experiments/committees/four_conv_and_allconv.py

Expected: 99.75% test (25 errors), voted from the saved outputs in results/outputs/ in a
few seconds on a 2-core CPU. The test set was looked at when earlier committees of
these families were reported (docs/ensembles.md says how much that matters).
"""

from experiments.committees import allconv
from mnist_cnn.committee_config import committee, members

CONFIG = "experiments/four_conv_elastic.py"
OUT = "results/outputs/modern_deep_el36_tv_{}s{{seed}}.npz"
K7 = "layers[0].kernel=7"


def four_conv_members():
    width = lambda w, s: members(CONFIG, (f"width_norm={w}",), (s,), OUT.format(f"w{w}_"))
    return (*members(CONFIG, seeds=range(1, 7), outputs=OUT.format("")),
            *width(14, 7), *width(18, 8), *width(12, 9), *width(16, 10),
            *members(CONFIG, ("layers[0].kernel=3",), (21, 23), OUT.format("k3_")),
            *members(CONFIG, (K7,), (22, 24, 26), OUT.format("k7_")),
            *members(CONFIG, (K7, "num_epochs=80"), (31, 32), OUT.format("k7_e80_")),
            *members(CONFIG, (K7, "layers[1].pool=l2", "layers[3].pool=l2"), (33, 34),
                     OUT.format("k7_l2_")),
            *width(10, 11), *width(20, 12),
            *members(CONFIG, (K7, "deskew=True"), range(41, 47), OUT.format("k7_dsk_")))


def get_config():
    return committee(four_conv_members() + allconv.allconv_members(), rule="mean_softmax",
                     eval_shifts=1, name="four_conv_and_allconv")
