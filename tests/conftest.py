"""Shared fixtures. Installed third-party plugins are kept out of the test run."""

from __future__ import annotations

import os

# Before anything builds a plugin manager: no installed third-party plugins in tests.
os.environ["MENTALGLM_LOAD_PLUGINS"] = ""
os.environ.pop("MENTALGLM_STRICT_PLUGINS", None)

import pytest  # noqa: E402

from mentalglm.core.plugins import PluginManager, reset_plugin_manager  # noqa: E402


@pytest.fixture
def pm():
    """A fresh plugin manager with only the built-in plugins."""
    reset_plugin_manager()
    manager = PluginManager()
    yield manager
    reset_plugin_manager()


@pytest.fixture(scope="session")
def tasks():
    """The built-in tasks by name."""
    return PluginManager().tasks()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny GLM models (``glm``, ``glm4``, ``chatglm`` layout), built once per session."""
    pytest.importorskip("torch", reason="the model tests need the torch extra")
    from models import build_models

    return build_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def exported(tiny_models, tmp_path_factory):
    """``exported(model, outtype)`` → path of that tiny model's GGUF, exported once per session."""
    pytest.importorskip("llama_cpp", reason="the GGUF tests need the llamacpp extra")
    from mentalglm.converters.gguf_export import export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    cache: dict = {}

    def get(model: str, outtype: str):
        key = (model, outtype)
        if key not in cache:
            cache[key] = export_gguf(tiny_models[model], folder / f"{model}-{outtype}.gguf", outtype=outtype).path
        return cache[key]

    return get


@pytest.fixture
def one_torch_thread():
    """torch on one thread for a test: tiny models gain nothing from intra-op threads, and on a
    busy 2-core machine spinning threads slow them about 10×."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
