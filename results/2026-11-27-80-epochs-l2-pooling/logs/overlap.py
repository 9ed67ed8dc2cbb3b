"""Descriptive, chooses nothing: how the new networks' (80-epoch and L2-pooling 7x7
nets) test errors overlap committee H's. Prints JSON: H's mean-softmax errors, each
network's errors and how many of H's errors it gets right, the mean Jaccard overlap of
two networks' error sets per group pair, and committee M's gains and losses against H.
Reads the float16 archive in results/outputs/ (it reproduces overlap.json exactly).
Run from the repository root: PYTHONPATH=. python results/2026-11-27-80-epochs-l2-pooling/logs/overlap.py"""
import json
import os
from itertools import combinations, product

import numpy as np

from mnist_cnn import data

test_y = np.asarray(data.load("idx", os.environ["MNIST_DATA_DIR"]).test.labels)
H = [f"results/outputs/modern_deep_el36_tv_{n}.npz" for n in
     "s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10 w10_s11 w20_s12 k3_s21 k3_s23 "
     "k7_s22 k7_s24 k7_s26".split()]
groups = dict(H=H,
              e80=[f"results/outputs/modern_deep_el36_tv_k7_e80_s{s}.npz" for s in (31, 32)],
              l2=[f"results/outputs/modern_deep_el36_tv_k7_l2_s{s}.npz" for s in (33, 34)])
files = [f for g in groups.values() for f in g]
prob = {}
for f in files:
    with np.load(f) as z:
        prob[f] = z["test_probabilities"][0].astype(np.float32)
wrong = lambda p: set(np.flatnonzero(p.argmax(-1) != test_y).tolist())
errs = {f: wrong(prob[f]) for f in files}
h = wrong(np.mean([prob[f] for f in H], 0))
out = dict(H_errors=len(h), H_wrong_images=sorted(h), networks={}, mean_error_jaccard={})
for f in files:
    out["networks"][os.path.basename(f)[:-4]] = dict(errors=len(errs[f]),
                                                     right_on_H_errors=len(h - errs[f]))
jac = lambda a, b: len(errs[a] & errs[b]) / len(errs[a] | errs[b])
names = list(groups)
for i, a in enumerate(names):
    for b in names[i:]:
        pairs = (combinations(groups[a], 2) if a == b else product(groups[a], groups[b]))
        vals = [jac(x, y) for x, y in pairs]
        if vals:
            out["mean_error_jaccard"][f"{a}-{b}"] = float(np.mean(vals))
new = groups["e80"] + groups["l2"]
if new:
    m = wrong(np.mean([prob[f] for f in H + new], 0))
    out["M"] = dict(errors=len(m), fixed_of_H=sorted(h - m), new_errors=sorted(m - h))
print(json.dumps(out, indent=1))
