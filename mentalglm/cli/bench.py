"""``mentalglm bench``: backends side by side on the same model and posts."""

from __future__ import annotations

import sys

from mentalglm.cli.common import add_data_arguments, data_mapping, mib, parse_options, plugins, print_json, table
from mentalglm.core.errors import MentalGLMError


def cmd_bench(args) -> int:
    """Measure backends side by side on the same model and posts."""
    from pathlib import Path

    from mentalglm.bench import parse_variants, run_bench, write_report
    from mentalglm.data.readers import read_posts

    options: dict[str, dict] = {}
    for key, value in parse_options(args.option).items():
        backend, dot, name = key.partition(".")
        if not dot:
            raise MentalGLMError(f"bench options are BACKEND.KEY=VALUE (e.g. llamacpp.n_threads=2), got '{key}'")
        options.setdefault(backend, {})[name] = value
    for backend in ("torch", "llamacpp"):
        options.setdefault(backend, {}).setdefault("max_new_tokens", str(args.max_new_tokens))
    task = plugins().task(args.task)
    posts = read_posts(args.data, task, data_mapping(args))[: args.posts]
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args.backends, args.model, out_dir, options)
    progress = None if args.quiet else (lambda label, r: print(f"round {r}: {label} done", file=sys.stderr))
    results = run_bench(variants, args.task, posts, rounds=args.rounds, mode=args.mode, batch_size=args.batch_size,
                        progress=progress)
    meta = {"task": args.task, "model": args.model, "data": args.data, "posts": len(posts), "rounds": args.rounds,
            "mode": args.mode, "batch_size": args.batch_size or "backend default",
            "max_new_tokens": args.max_new_tokens,
            "variants": [vars(v) for v in variants]}
    document = write_report(results, out_dir, meta)
    if args.json:
        print_json(document)
        return 0
    rows = []
    for r in document["results"]:
        metric = "-" if r["primary_value"] is None else f"{r['primary_metric']}={r['primary_value']:.3f}"
        if r.get("primary_interval"):
            metric += f" [{r['primary_interval']['low']:.3f}, {r['primary_interval']['high']:.3f}]"
        delta = r.get("primary_delta") or {}
        paired = "-" if "delta" not in delta else f"{delta['delta']:+.3f}" + (
            f" [{delta['low']:+.3f}, {delta['high']:+.3f}]" if delta.get("low") is not None else "")
        rows.append((r["label"], f"{r['posts_per_second']:.2f}", f"{r['tokens_per_second']:.1f}",
                     f"{r['p50_latency_s']:.3f}", f"{r['p95_latency_s']:.3f}", mib(r["memory_bytes"]),
                     f"{r['valid_rate']:.0%}", metric, paired, f"{r['speed_vs_first']:.2f}×"))
    print(table(rows, ["backend", "posts/s", "tokens/s", "p50 s", "p95 s", "load memory", "valid", "metric",
                        "Δ metric vs first (paired)", "vs first"]))
    machine = document["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'}; "
          f"{len(posts)} posts × {args.rounds} rounds, alternating; wrote {out_dir / 'bench.json'}"
          + (f" and {document['chart']}" if document.get("chart") else ""))
    return 0


def add_parser(sub) -> None:
    """Add ``bench``."""
    p = sub.add_parser("bench", help="backends side by side: speed, latency, memory, valid outputs, metric")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (or a .gguf for llamacpp only)")
    p.add_argument("--backends", default="torch,llamacpp:q8_0",
                   help="comma list: torch, llamacpp[:OUTTYPE], each with optional @KEY=VALUE options "
                        "(llamacpp:q8_0@parallel=1,llamacpp:q8_0@parallel=8; default torch,llamacpp:q8_0)")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--data", required=True, metavar="FILE", help="posts (gold labels optional) or sample:NAME")
    p.add_argument("--posts", type=int, default=32, help="how many posts of the file (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--mode", choices=["generate", "score"], default="generate")
    p.add_argument("--batch-size", type=int, default=None,
                   help="posts per backend call (default: each backend's choice)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("-O", "--option", action="append", metavar="BACKEND.KEY=VALUE", help="backend option, repeatable")
    p.add_argument("--output-dir", default="runs/bench", metavar="DIR", help="bench.json, bench.png, exported GGUFs")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_data_arguments(p)
    p.set_defaults(func=cmd_bench)
