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
