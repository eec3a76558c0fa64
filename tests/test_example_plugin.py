"""The plugin guide's example package, pip-installed for real, works end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mentalglm-loneliness"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed with pip into its own folder, put on PYTHONPATH like site-packages."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(target), str(EXAMPLE)],
                            capture_output=True, text=True, timeout=300, cwd=build)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if k != "MENTALGLM_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def mentalglm(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mentalglm", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=cwd)


def test_installed_plugin_shows_in_plugins_json(installed):
    result = mentalglm(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["loneliness"]["tasks"] == ["loneliness"]
    assert plugins["loneliness"]["version"] == "0.1.0" and not plugins["loneliness"]["builtin"]


def test_installed_plugin_task_evaluates_with_replay(installed, tmp_path):
    data = EXAMPLE / "mentalglm_loneliness" / "data"
    result = mentalglm(installed, "evaluate", "--task", "loneliness", "--data", str(data / "posts.jsonl"),
                       "--backend", "replay", "--model", str(data / "outputs.jsonl"),
                       "--output-dir", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    # 4 of 6 right (lo-4 wrong, lo-6 invalid), computed by hand.
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["invalid"] == 1


def test_env_var_keeps_installed_plugins_out(installed):
    env = {**installed, "MENTALGLM_LOAD_PLUGINS": ""}
    names = {p["name"] for p in json.loads(mentalglm(env, "plugins", "--json").stdout)["plugins"]}
    assert "loneliness" not in names
