"""Descriptive, chooses nothing: how committee S's networks' test errors overlap, from
the vote's own record (vote_S.json lists every network's wrong test images) and
committee P's errors as results/2026-11-27-deskewed-committee-q/overlap.json records
them (P's wrong images = Q's, less Q's new errors, plus the P errors Q fixed). Prints
JSON: S's and AC's errors, the images S gets right and wrong against P, each
all-convolutional network's errors and how many of P's errors it gets right, and the
mean Jaccard overlap of two networks' test-error sets per group pair (M: committee M's
21 networks; dsk6: committee P's six deskewed networks, seeds 41-46; ac: the
all-convolutional networks on raw digits; acd: on deskewed digits).
Run from the repository root: PYTHONPATH=. python results/2026-11-27-allconv-committee/logs/overlap.py"""
import json
import os

from mnist_cnn import committee

R = "results/2026-11-27-allconv-committee"
with open(f"{R}/vote_S.json") as f:
    r = json.load(f)
with open("results/2026-11-27-deskewed-committee-q/overlap.json") as f:
    prev = json.load(f)
p = (set(prev["Q_wrong_images"]) - set(prev["Q_new_errors"])) | set(prev["Q_fixed_of_P"])
assert len(p) == prev["P_errors"], (len(p), prev["P_errors"])
errs = {os.path.basename(m["name"]).removesuffix(".npz"): m["test_wrong"] for m in r["members"]}


def group(name):
    if name.startswith("modern_allconv"):
        return "acd" if "_dsk_" in name else "ac"
    return "dsk6" if "_dsk_s" in name else "M"


sw = set(r["votes"]["mean_softmax"]["test_wrong"])
out = dict(P_errors=len(p), S_errors=len(sw), S_size=r["size"],
           S_plurality_errors=r["votes"]["plurality"]["test_errors"],
           S_fixed_of_P=sorted(p - sw), S_new_errors=sorted(sw - p),
           S_wrong_images=sorted(sw), S_test_wrong_by=r["test_wrong_by"],
           networks={n: dict(errors=len(e), right_on_P_errors=len(p - set(e)))
                     for n, e in errs.items() if group(n) in ("ac", "acd")},
           mean_error_jaccard=committee.group_overlaps(errs, group))
if os.path.exists(f"{R}/vote_AC.json"):
    with open(f"{R}/vote_AC.json") as f:
        d = json.load(f)
    out["AC"] = {k: v["test_errors"] for k, v in d["votes"].items()}
print(json.dumps(out, indent=1))
