"""Executors: where ``mentalglm analyze`` runs the posts through a backend.

- ``local`` (the default): this process, :meth:`mentalglm.analysis.analyzer.Analyzer.run`.
- ``ray``: Ray Data actors on a cluster (:mod:`mentalglm.executors.ray_data`, the ``[ray]`` extra),
  each owning one backend; blocks of predictions are written by post id
  (:mod:`mentalglm.executors.blocks`) so a rerun finishes the job with every id exactly once.

Nothing here imports Ray: the command line and the core stay light without the extra. The
command-line flags live in :mod:`mentalglm.cli.analyze`.
"""

from __future__ import annotations

#: The executors ``analyze --executor`` accepts.
EXECUTORS = ("local", "ray")
