"""Descriptive, chooses nothing: how committee Q's networks' test errors overlap, from
the vote's own record (vote_Q.json lists every network's wrong test images) and
committee P's errors as results/2026-11-27-deskewed-committee-p/overlap.json records
them. Prints JSON: Q's and D12's errors, the images Q gets right and wrong against P,
each network of seeds 47-52's errors and how many of P's errors it gets right, and the
mean Jaccard overlap of two networks' test-error sets per group pair (M: committee M's
21 networks; dsk6: committee P's six deskewed networks, seeds 41-46; dsk_new: the
deskewed networks of seeds 47-52).
Run from the repository root: PYTHONPATH=. python results/2026-11-27-deskewed-committee-q/logs/overlap.py"""
import json
import os

from mnist_cnn import committee

R = "results/2026-11-27-deskewed-committee-q"
with open(f"{R}/vote_Q.json") as f:
    q = json.load(f)
with open("results/2026-11-27-deskewed-committee-p/overlap.json") as f:
    prev = json.load(f)
p = (set(prev["M_wrong_images"]) - set(prev["P"]["fixed_of_M"])) | set(prev["P"]["new_errors"])
errs = {os.path.basename(m["name"]).removesuffix(".npz"): m["test_wrong"] for m in q["members"]}


def group(name):
    if "_dsk_s" not in name:
        return "M"
    return "dsk6" if int(name.rsplit("_s", 1)[1]) <= 46 else "dsk_new"


qw = set(q["votes"]["mean_softmax"]["test_wrong"])
out = dict(P_errors=len(p), Q_errors=len(qw), Q_size=q["size"],
           Q_plurality_errors=q["votes"]["plurality"]["test_errors"],
           Q_fixed_of_P=sorted(p - qw), Q_new_errors=sorted(qw - p),
           Q_wrong_images=sorted(qw), Q_test_wrong_by=q["test_wrong_by"],
           networks={n: dict(errors=len(e), right_on_P_errors=len(p - set(e)))
                     for n, e in errs.items() if group(n) == "dsk_new"},
           mean_error_jaccard=committee.group_overlaps(errs, group))
if os.path.exists(f"{R}/vote_D12.json"):
    with open(f"{R}/vote_D12.json") as f:
        d = json.load(f)
    out["D12"] = {k: v["test_errors"] for k, v in d["votes"].items()}
print(json.dumps(out, indent=1))
