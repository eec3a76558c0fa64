"""Benchmark settings. ``MENTALGLM_BENCH_SCALE=smoke`` shrinks every suite so CI can run it once quickly."""

from __future__ import annotations

import os

os.environ.setdefault("MENTALGLM_LOAD_PLUGINS", "")
