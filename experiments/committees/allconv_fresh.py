"""Four all-convolutional networks with seeds no run had used, named before any trained.

experiments/allconv.py with seeds 3001 and 3002 on raw digits, and with
--config.deskew=True seeds 3003 and 3004, each trained on all 60,000 training images and
evaluated at its last epoch with the five 1-pixel shift views; the mean softmax votes.
The recipe is the one the committee allconv.py measured; this file was committed before
the first member's first checkpoint, and nothing in it was chosen after seeing its
members' results: it is the fresh measurement of that recipe's committee.

    python run.py --mode=committee --config=experiments/committees/allconv_fresh.py \\
        --workdir=runs/allconv_fresh

Expected: 99.71% test (29 errors; members 99.65-99.69%), about 25 minutes a member
on a 2-core Intel Xeon (results/2026-12-01-allconv-fresh-committee).
"""

from mnist_cnn.committee_config import committee, members

OUT = "results/outputs/allconv_fresh_{}s{{seed}}.npz"


def get_config():
    return committee(
        (*members("experiments/allconv.py", seeds=(3001, 3002), outputs=OUT.format("")),
         *members("experiments/allconv.py", ("deskew=True",), seeds=(3003, 3004),
                  outputs=OUT.format("dsk_"))),
        rule="mean_softmax", eval_shifts=1, name="allconv_fresh")
