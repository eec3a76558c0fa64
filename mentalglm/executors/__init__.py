"""Executors: where ``mentalglm analyze`` runs the posts through a backend.

- ``local`` (the default): this process, :meth:`mentalglm.core.analyzer.Analyzer.run`.
- ``ray``: Ray Data actors on a cluster (:mod:`mentalglm.executors.ray_data`, the ``[ray]`` extra),
  each owning one backend; blocks of predictions are written by post id
  (:mod:`mentalglm.executors.blocks`) so a rerun finishes the job with every id exactly once.

Nothing here imports Ray: the command line and the core stay light without the extra.
"""

from __future__ import annotations

import argparse

from mentalglm.argtypes import at_least

#: The executors ``analyze --executor`` accepts.
EXECUTORS = ("local", "ray")


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
