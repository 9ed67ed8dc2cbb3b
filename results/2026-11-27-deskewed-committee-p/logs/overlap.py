"""Descriptive, chooses nothing: how the deskewed networks' test errors overlap those of
committee M (the 21 networks of results/2026-11-27-80-epochs-l2-pooling). Prints JSON: M's mean-softmax errors,
each deskewed network's errors and how many of M's errors it gets right, the mean
Jaccard overlap of two networks' error sets per group pair, and committee P's gains and
losses against M. Reads the float16 archive in results/outputs/ (it reproduces
overlap.json exactly).
Run from the repository root: PYTHONPATH=. python results/2026-11-27-deskewed-committee-p/logs/overlap.py"""
import json
import os
from itertools import combinations, product

import numpy as np

from mnist_cnn import committee, data

test_y = np.asarray(data.load("idx", os.environ["MNIST_DATA_DIR"]).test.labels)
M = [f"results/outputs/modern_deep_el36_tv_{n}.npz" for n in
     "s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10 w10_s11 w20_s12 k3_s21 k3_s23 "
     "k7_s22 k7_s24 k7_s26 k7_e80_s31 k7_e80_s32 k7_l2_s33 k7_l2_s34".split()]
groups = dict(M=M, dsk=[f"results/outputs/modern_deep_el36_tv_k7_dsk_s{s}.npz"
                        for s in range(41, 47)])
files = [f for g in groups.values() for f in g]
prob = {f: committee.load_outputs(f)["test_probabilities"][0] for f in files}
wrong = lambda p: set(np.flatnonzero(p.argmax(-1) != test_y).tolist())
errs = {f: wrong(prob[f]) for f in files}
m = wrong(np.mean([prob[f] for f in M], 0))
out = dict(M_errors=len(m), M_wrong_images=sorted(m), networks={}, mean_error_jaccard={})
for f in groups["dsk"]:
    out["networks"][os.path.basename(f)[:-4]] = dict(errors=len(errs[f]),
                                                     right_on_M_errors=len(m - errs[f]))
jac = lambda a, b: len(errs[a] & errs[b]) / len(errs[a] | errs[b])
names = list(groups)
for i, a in enumerate(names):
    for b in names[i:]:
        pairs = (combinations(groups[a], 2) if a == b else product(groups[a], groups[b]))
        vals = [jac(x, y) for x, y in pairs]
        if vals:
            out["mean_error_jaccard"][f"{a}-{b}"] = float(np.mean(vals))
if groups["dsk"]:
    p = wrong(np.mean([prob[f] for f in M + groups["dsk"]], 0))
    out["P"] = dict(errors=len(p), fixed_of_M=sorted(m - p), new_errors=sorted(p - m))
print(json.dumps(out, indent=1))
