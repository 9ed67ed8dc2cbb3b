"""Descriptive, chooses nothing: how committee R's networks' test errors overlap, from
the vote's own record (vote_R.json lists every network's wrong test images) and
committee P's errors as results/2026-11-27-deskewed-committee-q/overlap.json records
them (P's wrong images = Q's, less Q's new errors, plus the P errors Q fixed). Prints
JSON: R's and DW's errors, the images R gets right and wrong against P, each
deskewed-and-width-normalised network's errors and how many of P's errors it gets
right, and the mean Jaccard overlap of two networks' test-error sets per group pair
(M: committee M's 21 networks; dsk6: committee P's six deskewed networks, seeds 41-46;
dw: the deskewed and width-normalised networks, seeds 61-66).
Run from the repository root: PYTHONPATH=. python results/2026-11-27-deskewed-width-committee-r/logs/overlap.py"""
import json
import os

from mnist_cnn import committee

R = "results/2026-11-27-deskewed-width-committee-r"
with open(f"{R}/vote_R.json") as f:
    r = json.load(f)
with open("results/2026-11-27-deskewed-committee-q/overlap.json") as f:
    prev = json.load(f)
p = (set(prev["Q_wrong_images"]) - set(prev["Q_new_errors"])) | set(prev["Q_fixed_of_P"])
assert len(p) == prev["P_errors"], (len(p), prev["P_errors"])
errs = {os.path.basename(m["name"]).removesuffix(".npz"): m["test_wrong"] for m in r["members"]}


def group(name):
    if "_dsk_w" in name:
        return "dw"
    return "dsk6" if "_dsk_s" in name else "M"


rw = set(r["votes"]["mean_softmax"]["test_wrong"])
out = dict(P_errors=len(p), R_errors=len(rw), R_size=r["size"],
           R_plurality_errors=r["votes"]["plurality"]["test_errors"],
           R_fixed_of_P=sorted(p - rw), R_new_errors=sorted(rw - p),
           R_wrong_images=sorted(rw), R_test_wrong_by=r["test_wrong_by"],
           networks={n: dict(errors=len(e), right_on_P_errors=len(p - set(e)))
                     for n, e in errs.items() if group(n) == "dw"},
           mean_error_jaccard=committee.group_overlaps(errs, group))
if os.path.exists(f"{R}/vote_DW.json"):
    with open(f"{R}/vote_DW.json") as f:
        d = json.load(f)
    out["DW"] = {k: v["test_errors"] for k, v in d["votes"].items()}
print(json.dumps(out, indent=1))
