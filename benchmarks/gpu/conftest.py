"""Fixtures of the GPU-marked tests: the tiny GLM model, its GGUF files, and the ``gpu`` marker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # tests/models.py: the shared factory


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and a CUDA build of llama-cpp-python for llama.cpp)")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The test suite's tiny GLM models, built once."""
    pytest.importorskip("torch")
    from models import build_models

    return build_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def exported(tiny_models, tmp_path_factory):
    """``exported(model, outtype)`` → that tiny model's GGUF, exported once."""
    from mentalglm.converters.gguf_export import export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    cache: dict = {}

    def get(model: str, outtype: str):
        if (model, outtype) not in cache:
            cache[model, outtype] = export_gguf(tiny_models[model], folder / f"{model}-{outtype}.gguf",
                                                outtype=outtype).path
        return cache[model, outtype]

    return get
