"""Revotes every committee recorded in results/*/vote_*.json whose networks are all
archived here (float16 outputs, --vote_save_precision=float16) and compares the test
errors of both votes with the record (and the very images wrong, for records that list
them). Needs the MNIST files (MNIST_DATA_DIR).

    PYTHONPATH=. python results/outputs/check.py
"""
import glob
import json
import os
import sys

from mnist_cnn import committee

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    bad = 0
    for record in sorted(glob.glob(os.path.join(HERE, "..", "*", "vote_*.json"))):
        with open(record) as f:
            want = json.load(f)
        files = [os.path.join(HERE, os.path.basename(m["name"]).removesuffix(".npz") + ".npz")
                 for m in want["members"]]
        name = os.path.relpath(record, os.path.join(HERE, ".."))
        if want.get("eval_shifts") not in (None, 1) or not all(map(os.path.isfile, files)):
            print(f"{name}: skipped (its networks' views are not all archived here)")
            continue
        got = committee.vote_runs(files, log=lambda *a: None, rule=want["chosen_vote"])
        errs = lambda r: {k: v["test_errors"] for k, v in r["votes"].items()}
        same = errs(got) == errs(want) and all(   # the very images, where recorded
            got["votes"][k]["test_wrong"] == v["test_wrong"]
            for k, v in want["votes"].items() if "test_wrong" in v)
        bad += not same
        print(f"{name}: {len(files)} networks, recorded {errs(want)}, "
              f"archive {errs(got)}: {'same' if same else 'DIFFERENT'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
