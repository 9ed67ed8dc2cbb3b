"""The four all-convolutional networks: two on raw digits, two on deskewed digits.

experiments/allconv.py seeds 71 and 72, and with --config.deskew=True seeds 73 and 74,
each trained on all 60,000 training images and evaluated at its last epoch with the
five 1-pixel shift views; the mean softmax votes (fixed in advance). Votes from the
saved outputs in results/outputs/ (recorded as vote_AC in
results/2026-11-27-allconv-committee/):

    python run.py --mode=vote --config=experiments/committees/allconv.py

Expected: 99.75% test (25 errors); a few seconds on a 2-core CPU.
"""

from mnist_cnn.committee_config import committee, members

OUT = "results/outputs/modern_allconv_el36_tv_{}s{{seed}}.npz"


def allconv_members():
    return (*members("experiments/allconv.py", seeds=(71, 72), outputs=OUT.format("")),
            *members("experiments/allconv.py", ("deskew=True",), seeds=(73, 74),
                     outputs=OUT.format("dsk_")))


def get_config():
    return committee(allconv_members(), rule="mean_softmax", eval_shifts=1,
                     name="allconv")
