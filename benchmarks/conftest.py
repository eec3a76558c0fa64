"""Benchmark settings. ``MENTALGLM_BENCH_SCALE=smoke`` shrinks every suite so CI can run it once quickly."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MENTALGLM_LOAD_PLUGINS", "")


@pytest.fixture
def torch_threads():
    """torch uses as many threads as llama.cpp is given (:func:`bench_models.bench_threads`), for one test only."""
    import torch

    from bench_models import bench_threads

    before = torch.get_num_threads()
    threads = bench_threads()
    torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(before)
