"""Documentation stays in step with the code: every hook, command and option is documented.

README.md is the front page (what it is, set-up, a short tour); the reference lives in docs/,
with docs/cli.md generated from ``--help`` by docs/cli_reference.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from mentalglm.cli import build_parser
from mentalglm.core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: docs/*.md by name; cli.md is generated, the others are written by hand.
PAGES = {path.name: path.read_text(encoding="utf-8") for path in sorted(DOCS_DIR.glob("*.md"))}
CLI_MD = PAGES.get("cli.md", "")
HANDWRITTEN = "\n".join(text for name, text in PAGES.items() if name != "cli.md")
DOCS = "\n".join(PAGES.values())
HOOKS = [name for name in dir(hookspecs) if name.startswith(("register_", "on_"))]
README_MAX_BYTES = 15 * 1024
REGENERATE = ".venv/bin/python docs/cli_reference.py"


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every sub-command, nested ones included: ``{"analyze": parser, "data inspect": parser, …}``."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[prefix + name] = sub
                found.update(_commands(sub, prefix + name + " "))
    return found


COMMANDS = _commands(build_parser())


def test_docs_pages_exist():
    expected = {"index.md", "usage.md", "tasks-and-plugins.md", "backends.md", "training.md", "data.md",
                "statistics.md", "review.md", "scale-out.md", "models.md", "benchmarking.md", "development.md",
                "cli.md"}
    assert expected <= PAGES.keys(), expected - PAGES.keys()
    for name in PAGES:
        assert f"({name})" in PAGES["index.md"] or name == "index.md", f"docs/index.md does not link {name}"
        assert f"(docs/{name})" in README, f"README.md does not link docs/{name}"
    assert "(BENCHMARKS.md)" in README


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert re.search(rf"^### `{hook}\(", HANDWRITTEN, re.M), f"hook {hook} is missing from docs/tasks-and-plugins.md"
    assert getattr(hookspecs, hook).__doc__, f"hook {hook} has no docstring"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented(command):
    assert f"## mentalglm {command}\n" in CLI_MD, f"docs/cli.md lacks `mentalglm {command}`; run {REGENERATE}"
    assert f"mentalglm {command}" in HANDWRITTEN, f"no hand-written page under docs/ mentions `mentalglm {command}`"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_documented(command):
    options = {flag for action in COMMANDS[command]._actions for flag in action.option_strings
               if flag.startswith("--")}
    missing = sorted(flag for flag in options if not re.search(rf"{re.escape(flag)}(?![\w-])", DOCS))
    assert not missing, f"`mentalglm {command}` options not documented under docs/: {missing}"


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS_DIR / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    reference = _cli_reference()
    generated = reference.generate()
    if CLI_MD != generated:
        made_with = re.search(r"argparse of Python (\d+\.\d+)", CLI_MD)
        if made_with and made_with.group(1) != reference.python_version():
            pytest.skip(f"docs/cli.md was made with Python {made_with.group(1)}, whose argparse lays out help "
                        f"differently from this Python {reference.python_version()}'s")
    assert CLI_MD == generated, f"docs/cli.md is stale; regenerate it: {REGENERATE}"


def test_cli_reference_check_flag(tmp_path, monkeypatch, capsys):
    reference = _cli_reference()
    stale = tmp_path / "cli.md"
    stale.write_text("# stale\n", encoding="utf-8")
    monkeypatch.setattr(reference, "OUTPUT", stale)
    assert reference.main(["--check"]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0


def test_readme_is_short():
    size = len(README.encode("utf-8"))
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move reference material to docs/"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{name}" for name in PAGES)])
def test_relative_links_resolve(page):
    path = ROOT / page
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{page} links to missing files: {broken}"


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    block = re.search(r"## Set up.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = commands[1]
    assert "pytest" in test_command
    pytest_part = test_command[test_command.index("python -m pytest"):]
    assert pytest_part in ci


def test_samples_are_marked_synthetic_in_readme():
    assert "synthetic" in README.lower()
    assert "synthetic" in PAGES["data.md"].lower()


def _usage_commands_without_a_model() -> list[list[str]]:
    """The README tour's examples that need no model: replay backend, task validation."""
    import shlex

    block = re.search(r"## Usage.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("mentalglm ") and ("--backend replay" in line or "--validate" in line):
            commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize("args", _usage_commands_without_a_model(), ids=lambda a: " ".join(a[:3]))
def test_readme_usage_examples_run_as_written(args, tmp_path):
    from conftest import run_cli

    # Outputs go to a temporary folder; everything else is exactly what the README says.
    moved = [str(tmp_path / a) if previous in ("--output", "--output-dir") else a
             for previous, a in zip([None, *args], args)]
    result = run_cli(*moved, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stderr}"


def test_readme_has_model_free_usage_examples():
    assert len(_usage_commands_without_a_model()) >= 4

