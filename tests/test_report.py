"""results/results.csv, the one source of every reported figure, and what is generated
from it: the README's tables and run.py --list. Each row is checked against the raw
files it names (the run's config.json and summary.json, the vote's JSON), which earlier
versions of the code wrote."""

import json
import os
import re

import pytest

from mnist_cnn import config as config_lib
from mnist_cnn import report

ROOT = report.ROOT
ROWS = report.load()


def test_csv_rows_are_complete_and_consistent():
    keys = [(r["name"], r["experiment"]) for r in ROWS]   # one idea may hold two rows
    assert len(set(keys)) == len(keys), "row names must be unique within an experiment"
    for r in ROWS:
        assert r["table"] in ("",) + report.TABLES, r["name"]
        assert re.fullmatch(r"2026-\d\d-\d\d", r["date"]), r["name"]
        assert r["machine"] and r["jax"] and r["command"] and r["selection"], r["name"]
        if r["test_accuracy"]:
            errors = round(10_000 - 100 * float(r["test_accuracy"]))
            assert int(r["test_errors"]) == errors, r["name"]
        else:
            assert r["throughput"], f"{r['name']}: neither an accuracy nor a throughput"
    assert len({r["name"] for r in ROWS if r["table"] == "beyond"}) <= 8


@pytest.mark.parametrize("row", [r for r in ROWS if "run.py" in r["command"]],
                         ids=lambda r: r["name"])
def test_csv_command_builds_the_config_its_run_recorded(row, run_py_config, training_fields):
    """Every run.py command of the table parses as run.py parses it and validates;
    where the row's folder holds the run's config.json, the command builds that config
    (up to fields that do not change training)."""
    c = run_py_config(row["command"])
    recorded = os.path.join(ROOT, "results", row["folder"], "config.json")
    if c is None or not row["folder"] or not os.path.isfile(recorded):
        return
    with open(recorded) as f:
        want = config_lib.with_defaults(json.load(f))
    assert training_fields(c.to_dict()) == training_fields(want)


def _percent(x) -> str:
    return f"{100 * x:.2f}"


@pytest.mark.parametrize("row", [r for r in ROWS if r["folder"]], ids=lambda r: r["name"])
def test_csv_figures_match_the_raw_files(row):
    path = os.path.join(ROOT, "results", row["folder"])
    assert os.path.exists(path), f"{row['name']}: no {path}"
    summary = os.path.join(path, "summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            s = json.load(f)
        assert row["test_accuracy"] == _percent(s["test_accuracy"]), row["name"]
        if row["validation_accuracy"] and s.get("selection") != "last_epoch":
            assert row["validation_accuracy"] == _percent(s["best_validation_accuracy"])
    elif re.search(r"vote_[^/]*\.json$", path):
        with open(path) as f:
            v = json.load(f)
        assert int(row["test_errors"]) == v["votes"][v["chosen_vote"]]["test_errors"]


def unmeasured() -> set:
    return report.not_yet_measured(report.experiment_files())


def test_list_rows_name_existing_experiments():
    files = set(report.experiment_files())
    keys = report.listed(ROWS)
    for key in keys:
        assert key.split(":")[0] in files, key
    for name in files:   # every experiment file has a measured figure, or says it has none
        measured = any(k == name or k.startswith(name + ":") for k in keys)
        assert measured != (name in unmeasured()), name


def test_readme_tables_are_generated_from_the_csv():
    with open(report.README) as f:
        text = f.read()
    assert report.render(text, ROWS) == text, (
        "README.md's tables differ from results/results.csv: python -m mnist_cnn.report")


def test_render_replaces_only_between_markers_and_needs_them():
    rows = [dict(ROWS[0], table="book", name="x", book="99.00", test_accuracy="98.50",
                 command="python run.py --config=experiments/shallow.py --workdir=r",
                 machine="M", wall_time_s="90")]
    begin, end = report._markers("book")
    b2, e2 = report._markers("beyond")
    text = f"intro\n{begin}\nold\n{end}\nmiddle\n{b2}\n{e2}\nout\n"
    new = report.render(text, rows)
    assert new.startswith("intro\n") and "\nmiddle\n" in new and new.endswith("out\n")
    assert "| x | 99.00% | **98.50%** | `python run.py --config=experiments/shallow.py " \
           "--workdir=r` | M | 90 s |" in new and "old" not in new
    assert report.render(new, rows) == new
    with pytest.raises(report.ReportError, match="markers"):
        report.render("no markers", rows)


def test_durations_read_as_a_person_writes_them():
    assert [report.duration(s) for s in ("", "11.7", "56", "190", "2280", "43200")] == [
        "-", "11.7 s", "56 s", "3 min", "38 min", "12.0 h"]


def test_experiment_docstrings_quote_figures_of_their_own_rows():
    """Each experiment's docstring gives its command and an 'Expected:' figure, and every
    percentage there is one results.csv reports for that experiment (or the book's)."""
    for name in sorted(set(report.experiment_files()) - unmeasured()):
        doc = report.docstring(name)
        assert re.search(r"python (run\.py|benchmarks/\S+\.py) ", doc), name
        expected = doc[doc.index("Expected:"):]
        figures = set(re.findall(r"(\d+\.\d\d)%", expected))
        stem = name.split("/")[-1]
        ours = {f"{float(r[k]):.2f}" for r in ROWS for k in ("test_accuracy", "book")
                if r[k] and (r["experiment"].split(":")[0] == name
                             or stem in r["command"])}
        assert figures and figures <= ours, (name, figures - ours)


def test_rows_of_one_idea_share_a_line_of_the_beyond_table():
    """Two beyond rows with one name make one line, their cells in the csv's order."""
    row = lambda name, acc, errors, cmd: dict(
        name=name, table="beyond", throughput="", selection="last epoch", seeds="",
        test_accuracy=acc, test_errors=errors, command=cmd, machine="m", wall_time_s="")
    table = report.beyond_table([row("A", "99.71", "29", "a"), row("B", "99.00", "100", "b"),
                                 row("A", "99.75", "25", "c")])
    lines = table.splitlines()[2:]
    assert len(lines) == 2 and lines[0].startswith("| A | **99.71%**")
    assert "<br>**99.75%** (25 errors" in lines[0] and "`a`<br>`c`" in lines[0]
    assert lines[1].startswith("| B | **99.00%**")


def test_the_readme_is_rewritten_whole_leaving_other_files_alone(tmp_path, monkeypatch):
    """python -m mnist_cnn.report rewrites README.md through a temporary file of its
    own: another file named README.md.tmp is left as it was."""
    readme = tmp_path / "README.md"
    with open(report.README) as f:
        readme.write_text(f.read().replace("| 99.", "| 98.", 1))
    (tmp_path / "README.md.tmp").write_text("someone else's")
    monkeypatch.setattr(report, "README", str(readme))
    assert report.main(["report"]) == 0
    with open(report.README) as f:
        assert readme.read_text() == f.read()   # the tables regenerated from results.csv
    assert (tmp_path / "README.md.tmp").read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "README.md.tmp"]
