"""``mentalglm analyze``: label and explain posts given as arguments or in a file (here or on Ray)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mentalglm.cli.common import (
    add_data_arguments,
    add_model_arguments,
    analyzer_arguments,
    at_least,
    data_mapping,
    make_analyzer,
    plugins,
    print_json,
)
from mentalglm.core.errors import MentalGLMError
from mentalglm.executors import EXECUTORS


def _print_prediction(prediction, response_format) -> None:
    status = "" if prediction.valid else f"  [invalid: {prediction.problem}]"
    if prediction.probabilities is not None:  # calibrated: how sure, and whether a person should look
        shown = ", ".join(f"{label} {p:.2f}" for label, p in prediction.probabilities.items())
        status += f"  [{'needs review; ' if prediction.needs_review else ''}p: {shown}]"
    lines = response_format.answer_lines(prediction.labels if prediction.valid else (), prediction.fields)
    print(f"[{prediction.id}]{status}" if len(lines) > 1 else f"[{prediction.id}] {lines[0]}{status}")
    for line in lines if len(lines) > 1 else ():
        print(f"  {line}")
    if prediction.explanation:
        print(f"  {response_format.explanation_head}{prediction.explanation}")


def cmd_analyze(args) -> int:
    """Analyse posts given as arguments or in a file."""
    from mentalglm.core.prediction import Post
    from mentalglm.data.readers import PostSource, read_posts

    if args.text and args.input:
        raise MentalGLMError("give posts either as arguments or with --input FILE, not both")
    if not args.text and not args.input:
        raise MentalGLMError("no posts: give TEXT arguments or --input FILE")
    pm = plugins()
    task = pm.task(args.task)
    if ray_requested(args):  # Ray Data workers on a cluster (the [ray] extra)
        return analyze_on_ray(args, task, analyzer_arguments(args, task))
    if not args.input:
        posts = [Post(id=str(i), text=t) for i, t in enumerate(args.text, 1)]
    elif args.output:  # streamed: a file of millions of posts runs in flat memory
        posts = PostSource(args.input, task, data_mapping(args))
    else:  # printed to the terminal, so a list is fine
        posts = read_posts(args.input, task, data_mapping(args))
    with make_analyzer(args, task) as analyzer:
        if args.output:
            summary = analyzer.run(posts, args.output, progress=False if args.quiet else None, data=args.input,
                                   retry_hint="use another --output or delete it and its .run.json")
            result = {"output": summary.output, "posts": summary.total, "analysed": summary.analysed,
                      "skipped": summary.skipped, "invalid": summary.invalid,
                      "without_label_line": summary.without_label_line, **summary.backend_stats}
            if args.json:
                print_json(result)
            else:
                print(f"{summary.analysed} posts analysed, {summary.skipped} already done, "
                      f"{summary.invalid} invalid, {summary.without_label_line} read without a label line "
                      f"→ {summary.output}")
                if "replicas" in summary.backend_stats:
                    from mentalglm.backends.replicas import describe_counts

                    print(f"replicas: {describe_counts(summary.backend_stats['replicas'])}")
            return 0
        analyzer.backend.preflight((p.id for p in posts), response_format=analyzer.response_format)
        for prediction in analyzer.analyze_many(posts):
            if args.json and len(posts) == 1:
                print_json(prediction.to_dict())
            elif args.json:
                sys.stdout.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
            else:
                _print_prediction(prediction, analyzer.response_format)
    return 0


# -- --executor ray -------------------------------------------------------------------------------
def ray_requested(args: argparse.Namespace) -> bool:
    """Whether ``analyze`` runs on Ray; Ray's flags without ``--executor ray`` are refused, not ignored.

    Raises:
        MentalGLMError: ``--ray-address``, ``--workers``, ``--worker-cpus`` or ``--worker-gpus`` without Ray.
    """
    from mentalglm.core.errors import MentalGLMError

    if args.executor == "ray":
        return True
    given = [flag for flag, value in (("--ray-address", args.ray_address), ("--workers", args.workers),
                                      ("--worker-cpus", args.worker_cpus), ("--worker-gpus", args.worker_gpus))
             if value is not None]
    if given:
        raise MentalGLMError(f"{given[0]} needs --executor ray")
    return False


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--executor`` flags of ``mentalglm analyze`` (Ray's only when ``--executor ray``)."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: this process (default); ray: Ray Data workers on a cluster (the [ray] extra; "
                             "needs --input and --output)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="--executor ray: the cluster to join (ray://HOST:10001 or HOST:6379); default: a local "
                             "one on this machine, nothing leaves it")
    parser.add_argument("--workers", type=at_least(1), metavar="N",
                        help="--executor ray: worker actors, each owning one backend (default 1)")
    parser.add_argument("--worker-cpus", type=at_least(0, float), metavar="N",
                        help="--executor ray: CPUs reserved per worker (default 1; llamacpp gets as many threads "
                             "unless -O n_threads is given)")
    parser.add_argument("--worker-gpus", type=at_least(0, float), metavar="N",
                        help="--executor ray: GPUs reserved per worker (default 0; 1 for torch or llamacpp offload)")


def analyze_on_ray(args, task, arguments: dict) -> int:
    """``mentalglm analyze --executor ray``: the posts of ``--input`` into ``--output`` on a Ray cluster.

    Returns:
        0; a run in which posts failed ends with a one-line error (exit code 1) after the summary.

    Raises:
        MentalGLMError: no ``--input``/``--output``, Ray missing, or what the executor raises.
    """
    from mentalglm.data.readers import PostSource
    from mentalglm.executors.ray_data import analyze_on_cluster

    if args.text or not args.input or not args.output:
        raise MentalGLMError("--executor ray needs --input FILE and --output FILE (predictions are written, not shown)")
    summary = analyze_on_cluster(PostSource(args.input, task, data_mapping(args)), output=args.output,
                                 address=args.ray_address, log_to_driver=args.verbose > 0, data=args.input,
                                 workers=args.workers or 1, num_cpus=args.worker_cpus or 1,
                                 num_gpus=args.worker_gpus or 0, progress=False if args.quiet else None, **arguments)
    if args.json:
        print_json(dataclasses.asdict(summary))
    else:
        print(f"{summary.analysed} posts analysed, {summary.skipped} already done, {summary.invalid} invalid, "
              f"{summary.without_label_line} read without a label line, {summary.errors} failed → {summary.output}")
    if summary.errors:
        raise MentalGLMError(f"{summary.errors} posts failed (first: {summary.first_error}); their ids are in "
                             f"{summary.errors_file}; rerun the same command to retry them")
    return 0


def add_parser(sub) -> None:
    """Add ``analyze``."""
    p = sub.add_parser("analyze", help="label and explain posts")
    add_model_arguments(p)
    p.add_argument("text", nargs="*", metavar="TEXT", help="posts to analyse")
    p.add_argument("--input", metavar="FILE", help="posts file (.jsonl, .json, .csv, .tsv, .txt) or sample:NAME")
    p.add_argument("--output", metavar="FILE", help="append predictions to this JSONL file; reruns resume")
    add_data_arguments(p)
    add_executor_arguments(p)
    p.set_defaults(func=cmd_analyze)
