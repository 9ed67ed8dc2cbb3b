"""The README, docs/ and results/ as a newcomer reads them: short, commands that run,
every config field documented, every results folder indexed, and no text that dates
anything by the periods of work that made it."""

import os
import re
import subprocess

import pytest
from absl import flags as absl_flags

from mnist_cnn import config as config_lib
from mnist_cnn.report import ROOT

README = os.path.join(ROOT, "README.md")


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def readme_commands(text: str) -> list[str]:
    """Every `python run.py ...` command of the README: from code blocks (backslash
    continuations joined, comments dropped) and from inline code."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    joined = "\n".join(b.replace("\\\n", " ") for b in blocks)
    commands = [line.split("#")[0].strip() for line in joined.splitlines()]
    commands += re.findall(r"`(python run\.py [^`]*)`", text)
    return [c for c in commands if c.startswith("python run.py")]


def test_readme_is_short():
    assert os.path.getsize(README) <= 15_000


def test_readme_commands_build_valid_configs_and_use_real_flags(run_py_config):
    """Each README command's flags exist in run.py and parse; its config (experiment,
    variant, overrides) or committee file loads and validates."""
    import mnist_cnn.main   # noqa: F401  (defines run.py's flags on absl's FLAGS)
    commands = readme_commands(_read("README.md"))
    assert len(commands) >= 10
    for command in commands:
        for arg in command.split()[2:]:
            name, _, value = arg[2:].partition("=")
            if name == "config" or name.startswith("config."):
                continue
            known = name if name in absl_flags.FLAGS else name.removeprefix("no")
            assert known in absl_flags.FLAGS, (command, name)
            if value:
                absl_flags.FLAGS[known].parser.parse(value)
        run_py_config(command)


def test_readme_names_the_best_network_and_committee_commands():
    text = _read("README.md")
    assert "python run.py --config=experiments/allconv.py" in text
    assert "python run.py --mode=vote --config=experiments/committees/" in text


def test_configuration_page_documents_every_config_field():
    page = _read("docs", "configuration.md")
    missing = [f for f in config_lib.base_config().keys() if f"`{f}`" not in page]
    assert not missing, f"docs/configuration.md lacks {missing}"
    for kind in config_lib.LAYER_KINDS:
        fields = config_lib.layer_defaults(kind)
        assert all(f"`{f}`" in page for f in fields), kind


def test_docs_links_resolve():
    pages = [README] + [os.path.join(ROOT, "docs", p) for p in os.listdir(
        os.path.join(ROOT, "docs"))] + [os.path.join(ROOT, "results", "README.md")]
    for page in pages:
        with open(page) as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target))
            assert os.path.exists(path), f"{page}: broken link {target}"


def test_results_index_lists_every_folder():
    index = _read("results", "README.md")
    folders = sorted(d for d in os.listdir(os.path.join(ROOT, "results"))
                     if os.path.isdir(os.path.join(ROOT, "results", d)))
    assert folders
    missing = [d for d in folders if d not in index]
    assert not missing, f"results/README.md does not list {missing}"


ORDINALS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|"
            "twelfth|thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|"
            "nineteenth|twentieth")
# The words of how work was organised, written in pieces (SESS + "ion") so that no file,
# this one included, holds them whole.
SESS = "sess"
HISTORY = re.compile(rf"\b({SESS}ions?|lent|this checkout|SIGSTOP|issue \d+|"
                     rf"({ORDINALS})[- ]({SESS}ion|round))\b", re.I)


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out if f]


def test_no_tracked_file_dates_anything_by_a_period_of_work():
    """Code, docs, results, tests and file names speak of the software, machines and
    dates, never of how the work was organised: nothing matches HISTORY (this file
    spells the pattern out, so it is the one exception)."""
    found = []
    for path in _tracked_files():
        if path == "tests/test_docs.py":
            continue
        if HISTORY.search(path):
            found.append(f"file name {path}")
        if path.endswith((".npz", ".png", ".gz")):
            continue
        try:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path}:{n}: {line.strip()[:100]}")
    assert not found, "\n".join(found[:40]) + f"\n({len(found)} in all)"
