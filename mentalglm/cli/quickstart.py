"""``mentalglm quickstart``: the offline end-to-end demo."""

from __future__ import annotations


def cmd_quickstart(args) -> int:
    """The offline end-to-end demo on the synthetic samples."""
    from mentalglm.demo.quickstart import run_quickstart

    run_quickstart(cache_dir=args.cache_dir, output_dir=args.output_dir, steps=args.steps)
    return 0


def add_parser(sub) -> None:
    """Add ``quickstart``."""
    p = sub.add_parser("quickstart",
                       help="offline end-to-end demo: train, export, analyse and evaluate on synthetic posts")
    p.add_argument("--cache-dir", metavar="DIR", help="demo model cache (default ~/.cache/mentalglm/quickstart)")
    p.add_argument("--output-dir", default="runs/quickstart", metavar="DIR",
                   help="evaluation runs (default runs/quickstart)")
    p.add_argument("--steps", type=int, help="training steps (default 60)")
    p.set_defaults(func=cmd_quickstart)
