"""The ``mentalglm`` command: one module per command group, the only user of argparse.

Nothing in the library imports this package (simonw/llm's rule): every command is a thin layer
over a library function that takes plain arguments. :func:`main` is the console script.
"""

from mentalglm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
