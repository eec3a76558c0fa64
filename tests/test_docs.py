"""Documentation stays in step with the code: every hook and CLI command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mentalglm.cli import build_parser
from mentalglm.core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
HOOKS = [name for name in dir(hookspecs) if name.startswith(("register_", "on_"))]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert re.search(rf"^### `{hook}\(", README, re.M), f"hook {hook} is missing from README.md's plugin guide"
    assert getattr(hookspecs, hook).__doc__, f"hook {hook} has no docstring"


def test_every_command_is_documented():
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in commands:
        assert f"mentalglm {command}" in README, command


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


def _usage_commands_without_a_model() -> list[list[str]]:
    """The README's Usage examples that need no model: replay backend, task validation."""
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
