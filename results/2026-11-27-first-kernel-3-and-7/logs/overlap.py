"""Descriptive, chooses nothing: how the new (k1=3 / k1=7) networks' test errors overlap
F12's. Prints JSON: F12's mean-softmax errors, each new network's errors, how many of
F12's errors it gets right, the same for the new networks' own committee, and the mean
Jaccard overlap of two networks' error sets (within F12, new with F12, within new).
Reads the float16 archive in results/outputs/ (it reproduces overlap.json exactly).
Run from the repository root: PYTHONPATH=. python results/2026-11-27-first-kernel-3-and-7/logs/overlap.py"""
import json
import os

import numpy as np

from mnist_cnn import data

test_y = np.asarray(data.load("idx", os.environ["MNIST_DATA_DIR"]).test.labels)
old = [f"results/outputs/modern_deep_el36_tv_{n}.npz" for n in
       "s1 s2 s3 s4 s5 s6 w14_s7 w18_s8 w12_s9 w16_s10 w10_s11 w20_s12".split()]
new = [f"results/outputs/modern_deep_el36_tv_{n}.npz" for n in
       "k3_s21 k3_s23 k7_s22 k7_s24 k7_s26".split()]
prob = {f: np.load(f)["test_probabilities"][0].astype(np.float32) for f in old + new}
wrong = lambda p: set(np.flatnonzero(p.argmax(-1) != test_y).tolist())
f12 = wrong(np.mean([prob[f] for f in old], 0))
out = dict(f12_errors=len(f12), f12_wrong_images=sorted(f12), networks={})
for f in old + new:
    w = wrong(prob[f])
    out["networks"][os.path.basename(f)[:-4]] = dict(
        errors=len(w), right_on_f12_errors=len(f12 - w))
errs = {f: wrong(prob[f]) for f in old + new}
jac = lambda a, b: len(errs[a] & errs[b]) / len(errs[a] | errs[b])
pairs = lambda xs, ys: [jac(a, b) for a in xs for b in ys if a < b or ys is not xs]
out["mean_error_jaccard"] = dict(
    f12_pairs=float(np.mean(pairs(old, old))),
    **({"new_with_f12": float(np.mean(pairs(new, old)))} if new else {}),
    **({"new_pairs": float(np.mean(pairs(new, new)))} if len(new) > 1 else {}))
if new:
    k = wrong(np.mean([prob[f] for f in new], 0))
    out["k_committee"] = dict(errors=len(k), right_on_f12_errors=len(f12 - k),
                              shared_with_f12=len(f12 & k))
print(json.dumps(out, indent=1))
