"""Benchmark settings. ``MENTALGLM_BENCH_SCALE=smoke`` shrinks every suite so CI can run it once quickly."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MENTALGLM_LOAD_PLUGINS", "")


@pytest.fixture
def torch_threads():
    """torch uses as many threads as llama.cpp is given (all cores), for one test only."""
    import torch

    before = torch.get_num_threads()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(before)
