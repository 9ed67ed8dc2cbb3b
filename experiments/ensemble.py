"""ensemble: five double_fc_dropout networks voting (plurality), trained together.

network3 (conv.py `ensemble(nets)`): five independently trained double_fc_dropout nets,
each test image classified by the plurality of their votes. Book: 99.67% (33 errors).
Here the five members are stacked on a leading axis and trained in one compiled program
(vmapped step), member i with seed+i for its init, dropout and shuffle streams. The
variant members=K sets their number; --config.vote=mean_softmax averages instead.

    python run.py --config=experiments/ensemble.py --workdir=runs/ensemble

Expected: 99.63% test (37 errors) at the best-validation epoch; 50M member-images in
249 s on one NVIDIA H100.
"""

from experiments import double_fc_dropout
from mnist_cnn.config import parse_variant


def get_config(arg="members=5"):
    v = parse_variant(arg, dict(vote="--config.vote={v}"), members=5)
    c = double_fc_dropout.get_config()
    c.name = "ensemble" if v["members"] == 5 else f"ensemble_{v['members']}"
    c.num_members = v["members"]
    return c
