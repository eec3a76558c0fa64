"""Write docs/cli.md, the command-line reference, from the ``--help`` of every ``mentalglm`` command.

Run from the repository root::

    .venv/bin/python docs/cli_reference.py            # (re)write docs/cli.md
    .venv/bin/python docs/cli_reference.py --check    # exit 1 when docs/cli.md is stale

The parser is the real one (:func:`mentalglm.cli.build_parser`); the root, every sub-command and
every nested sub-command (``data inspect``, ``review export``, ``batch export``, …) get a
``## mentalglm …`` heading and their help text. Help is formatted at a fixed width of 100 columns,
whatever the terminal, so the file only changes when the commands do (or argparse does: its
layout differs between Python versions, so the file names the version it was made with).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "cli.md"
REGENERATE = ".venv/bin/python docs/cli_reference.py"
WIDTH = "100"


@contextlib.contextmanager
def _fixed_width():
    """COLUMNS=100 while help is formatted (argparse reads it for every formatter), restored after."""
    saved = {name: os.environ.get(name) for name in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"] = WIDTH
    os.environ["NO_COLOR"] = "1"  # Python 3.14's argparse may colour help; never in a file
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and all its sub-commands, depth first, in the order ``--help`` lists them."""
    found = [parser]
    seen = {id(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in seen:  # an alias names the same parser twice
                    seen.add(id(sub))
                    found.extend(_commands(sub))
    return found


def python_version() -> str:
    """``3.11``: the Python whose argparse formats the help."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def generate() -> str:
    """The text of docs/cli.md for the commands as they are now."""
    with _fixed_width():
        from mentalglm.cli import build_parser

        parser = build_parser()
        sections = [(command.prog, command.format_help().rstrip()) for command in _commands(parser)]
    lines = [
        "# Command-line reference",
        "",
        f"Generated from `--help` by `docs/cli_reference.py` (100 columns, argparse of Python {python_version()});",
        f"do not edit by hand. After changing a command, regenerate it: `{REGENERATE}`",
        "(`tests/test_docs.py` fails while it is stale). The hand-written guides are listed in [index.md](index.md).",
        "",
        "Commands: " + ", ".join(f"`{prog}`" for prog, _ in sections[1:]) + ".",
    ]
    for prog, text in sections:
        lines += ["", f"## {prog}", "", "```text", text, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/cli.md, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md differs from the commands")
    args = parser.parse_args(argv)
    text = generate()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
    if args.check:
        if current != text:
            print(f"{OUTPUT.name} is stale; regenerate it: {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{OUTPUT.name} is up to date")
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}")
    else:
        print(f"{OUTPUT} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
