"""The README's result tables and `run.py --list`, generated from results/results.csv.

results/results.csv is the one source of every reported figure: one row per training
run, committee or benchmark, with its command, machine, date and software version.

    python -m mnist_cnn.report           # rewrite the tables in README.md
    python -m mnist_cnn.report --check   # exit 1, naming the table, if README.md differs
"""

from __future__ import annotations

import ast
import csv
import glob
import os
import sys

from mnist_cnn import metrics_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_CSV = os.path.join(ROOT, "results", "results.csv")
README = os.path.join(ROOT, "README.md")
COLUMNS = ("name", "table", "experiment", "list", "book", "command", "seeds", "machine",
           "date", "jax", "train_images", "wall_time_s", "test_accuracy", "test_errors",
           "validation_accuracy", "selection", "throughput", "folder", "notes")
TABLES = ("book", "beyond")


class ReportError(ValueError):
    """results.csv or README.md is not as the report needs it; the message says where."""


def load(path: str = RESULTS_CSV) -> list[dict]:
    """The rows of results.csv as dicts of strings, the header checked."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ReportError(f"{path}: the header must be {','.join(COLUMNS)}")
        return list(reader)


def percent(value: str) -> str:
    return f"{float(value):.2f}%" if value else "-"


def duration(seconds: str) -> str:
    """'2280' -> '38 min'; under two minutes in seconds, from ten hours in hours."""
    if not seconds:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s" if s < 20 else f"{s:.0f} s"
    return f"{s / 60:.0f} min" if s < 36_000 else f"{s / 3600:.1f} h"


def result_cell(row: dict) -> str:
    """The measured figure in bold, with its errors and how it was selected."""
    if row["throughput"]:
        return f"**{float(row['throughput']):,.0f}** training images/s"
    how = row["selection"].removeprefix("committee: ")
    if how.endswith("of seeds"):
        return f"**{percent(row['test_accuracy'])}** ({how} {row['seeds']})"
    if row["selection"].startswith("committee"):   # 'mean_softmax fixed in advance'
        rule, _, rest = how.partition(" ")
        how = (f"{rule.replace('_', ' ')} vote {rest}" if rule in ("mean_softmax", "plurality")
               else f"vote {how}")
    return f"**{percent(row['test_accuracy'])}** ({row['test_errors']} errors; {how})"


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def book_table(rows: list[dict]) -> str:
    """The chapter's experiments: the book's accuracy beside ours."""
    return _markdown(
        ["experiment", "book", "ours (test)", "command", "hardware", "wall time"],
        [[r["name"], percent(r["book"]), f"**{percent(r['test_accuracy'])}**",
          f"`{r['command']}`", r["machine"], duration(r["wall_time_s"])]
         for r in rows if r["table"] == "book"])


def beyond_table(rows: list[dict]) -> str:
    """One line per idea beyond the book: its measured result. Rows of one idea (the
    same name) share its line, in the csv's order, their cells joined with <br>."""
    ideas: dict[str, list[dict]] = {}
    for r in rows:
        if r["table"] == "beyond":
            ideas.setdefault(r["name"], []).append(r)
    join = lambda group, cell: "<br>".join(cell(r) for r in group)
    return _markdown(
        ["idea", "result", "command", "hardware", "wall time"],
        [[name, join(g, result_cell), join(g, lambda r: f"`{r['command']}`"),
          join(g, lambda r: r["machine"]), join(g, lambda r: duration(r["wall_time_s"]))]
         for name, g in ideas.items()])


def listed(rows: list[dict]) -> dict[str, dict]:
    """experiment key -> the row `run.py --list` shows for it; a key listed twice is
    an error."""
    out = {}
    for r in rows:
        if r["list"]:
            if r["experiment"] in out:
                raise ReportError(f"results.csv: two rows list {r['experiment']!r}")
            out[r["experiment"]] = r
    return out


def experiment_files(root: str = ROOT) -> list[str]:
    """experiments/NAME.py and experiments/committees/NAME.py as 'NAME' and
    'committees/NAME'."""
    names = []
    for pattern in ("experiments/*.py", "experiments/committees/*.py"):
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            if not path.endswith("__init__.py"):
                names.append(os.path.relpath(path, os.path.join(root, "experiments"))[:-3])
    return names


def docstring(name: str, root: str = ROOT) -> str:
    """experiments/NAME.py's docstring, read without importing it."""
    with open(os.path.join(root, "experiments", name + ".py")) as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


def not_yet_measured(names: list[str], root: str = ROOT) -> set[str]:
    """The experiments whose docstring says 'Expected: not yet measured' (a committee
    named before its members train)."""
    return {n for n in names if "Expected: not yet measured" in docstring(n, root)}


def list_text(rows: list[dict], names: list[str]) -> str:
    """Every experiment (and its measured variants) with the book's and our accuracy."""
    by_key = listed(rows)
    lines = [f"{'experiment':<36} {'book':<8} {'measured':<9} machine, date"]
    for name in names:
        keys = [k for k in by_key if k == name or k.startswith(name + ":")] or [name]
        for key in keys:
            r = by_key.get(key)
            if r is None:
                lines.append(f"{key:<36} {'-':<8} not yet measured")
                continue
            figure = (f"{float(r['throughput']):,.0f}/s" if r["throughput"]
                      else percent(r["test_accuracy"]))
            lines.append(f"{key:<36} {percent(r['book']):<8} {figure:<9} "
                         f"{r['machine']}, {r['date']}")
    lines.append("(figures from results/results.csv; python run.py --config=... runs each)")
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- results table: {name} (python -m mnist_cnn.report writes it) -->",
            f"<!-- end of results table: {name} -->")


def render(readme: str, rows: list[dict]) -> str:
    """README text with each generated table replaced by its rendering from rows."""
    tables = dict(book=book_table(rows), beyond=beyond_table(rows))
    for name in TABLES:
        begin, end = _markers(name)
        if readme.count(begin) != 1 or readme.count(end) != 1:
            raise ReportError(f"README.md must hold the markers {begin} and {end} once")
        head, rest = readme.split(begin)
        _, tail = rest.split(end)
        readme = f"{head}{begin}\n{tables[name]}\n{end}{tail}"
    return readme


def main(argv: list[str]) -> int:
    try:
        with open(README) as f:
            text = f.read()
        rows = load()
        new = render(text, rows)
    except (OSError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "--check" in argv[1:]:
        if new != text:
            print("error: README.md's result tables differ from results/results.csv; "
                  "run python -m mnist_cnn.report", file=sys.stderr)
            return 1
        return 0
    if new != text:
        metrics_io.write_text_atomic(README, new)
    print(f"README.md: {sum(r['table'] in TABLES for r in rows)} generated rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
