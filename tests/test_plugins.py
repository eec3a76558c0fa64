"""The plugin contract: built-ins via hooks, third-party plugins, duplicates, broken plugins, lookups."""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest

from mentalglm import (
    Backend,
    Completion,
    Label,
    PluginError,
    PluginManager,
    PromptStyle,
    SingleLabelTask,
    UnknownNameError,
    hookimpl,
)
from mentalglm.core import plugin_manager as plugins_module
from mentalglm.core.plugin_manager import PluginWarning


def test_builtins_register_through_the_hooks(pm):
    assert set(pm.tasks()) == {"depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway"}
    assert set(pm.prompts()) == {"glm4-chat", "plain", "auto", "server", "chatml", "qwen", "llama-3", "gemma"}
    assert "replay" in pm.backends()
    providers = {p.name: p for p in pm.providers()}
    assert providers["mentalglm.tasks"].builtin
    assert providers["mentalglm.tasks"].hooks == ["register_tasks"]


class StressPlugin:
    """A third-party style plugin registered on the manager directly."""

    @hookimpl
    def register_tasks(self, register):
        register(SingleLabelTask(name="stress", instruction="判断压力。", labels=[Label("有压力"), Label("无压力")]))

    @hookimpl
    def register_prompts(self, register):
        register(PromptStyle(name="bare", description="post only", template="{content}"))

    @hookimpl
    def register_backends(self, register):
        register("echo", EchoBackend)


class EchoBackend(Backend):
    """Answers every prompt with the first label (a test double)."""

    name = "echo"
    description = "test double"
    requires_model = False

    def generate(self, requests):
        return [Completion(r.id, "标签：有压力") for r in requests]


def test_registered_plugin_provides_items(pm):
    pm.register(StressPlugin(), name="stress-plugin")
    assert pm.task("stress").label_names == ("有压力", "无压力")
    assert pm.prompt("bare").render("判断。", "x") == "判断。\nx"
    assert pm.backend_class("echo") is EchoBackend
    provided = {p.name: p for p in pm.providers()}["stress-plugin"]
    assert (provided.tasks, provided.prompts, provided.backends) == (["stress"], ["bare"], ["echo"])
    pm.unregister("stress-plugin")
    with pytest.raises(UnknownNameError):
        pm.task("stress")


def test_duplicate_names_across_plugins_name_both_and_are_refused_only_where_used(pm):
    class Clash:
        @hookimpl
        def register_tasks(self, register):
            register(SingleLabelTask(name="depression", instruction="x", labels=[Label("a"), Label("b")]))

    pm.register(Clash(), name="clash-plugin")
    both = "'depression' is registered by plugin 'mentalglm.tasks' and plugin 'clash-plugin'"
    with pytest.raises(PluginError, match=both):
        pm.task("depression")
    assert pm.task("suicide-risk").name == "suicide-risk"  # every other name still works
    assert pm.conflict_messages() == [f"task {both}"]


def test_plugin_whose_hook_raises_is_skipped_with_a_warning(pm):
    class Broken:
        @hookimpl
        def register_tasks(self, register):
            raise RuntimeError("boom")

    pm.register(Broken(), name="broken-plugin")
    with pytest.warns(PluginWarning, match="plugin 'broken-plugin' failed in register_tasks: RuntimeError: boom"):
        tasks = pm.tasks()
    assert "depression" in tasks
    assert pm.failures and pm.failures[0][0] == "broken-plugin"


def test_bad_registration_is_a_plugin_failure(pm):
    class Wrong:
        @hookimpl
        def register_tasks(self, register):
            register({"name": "not-a-task"})

    pm.register(Wrong(), name="wrong-plugin")
    with pytest.warns(PluginWarning, match="wrong-plugin.*expected a Task"):
        pm.tasks()


def test_strict_mode_reraises(monkeypatch):
    monkeypatch.setenv("MENTALGLM_STRICT_PLUGINS", "1")
    manager = PluginManager()

    class Broken:
        @hookimpl
        def register_prompts(self, register):
            raise RuntimeError("boom")

    manager.register(Broken(), name="broken-plugin")
    with pytest.raises(PluginError, match="broken-plugin"):
        manager.prompts()


def _fake_entry_points(monkeypatch, *entry_points):
    monkeypatch.setattr(plugins_module.metadata, "entry_points",
                        lambda group=None: [ep for ep in entry_points if ep.group == group])


def test_entry_point_that_fails_to_import_warns_and_the_rest_works(monkeypatch):
    monkeypatch.delenv("MENTALGLM_LOAD_PLUGINS")
    _fake_entry_points(monkeypatch, metadata.EntryPoint("ghost", "mentalglm_ghost_plugin_xyz", "mentalglm"))
    with pytest.warns(PluginWarning, match="plugin 'ghost' failed to load: ModuleNotFoundError"):
        manager = PluginManager()
    assert "depression" in manager.tasks()
    monkeypatch.setenv("MENTALGLM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="ghost"):
        PluginManager()


def test_entry_points_load_and_env_var_filters(monkeypatch):
    entry = metadata.EntryPoint("examplestress", "tests.test_plugins:ENTRY_POINT_PLUGIN", "mentalglm")
    _fake_entry_points(monkeypatch, entry)
    monkeypatch.setenv("MENTALGLM_LOAD_PLUGINS", "examplestress")
    assert "stress" in PluginManager().tasks()
    monkeypatch.setenv("MENTALGLM_LOAD_PLUGINS", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "stress" not in PluginManager().tasks()


ENTRY_POINT_PLUGIN = StressPlugin()


@pytest.mark.parametrize("kind, call, name, hint", [
    ("task", "task", "depresion", "depression"),
    ("prompt style", "prompt", "glm4chat", "glm4-chat"),
    ("backend", "backend_class", "replya", "replay"),
])
def test_unknown_names_list_and_suggest(pm, kind, call, name, hint):
    with pytest.raises(UnknownNameError) as info:
        getattr(pm, call)(name)
    message = str(info.value)
    assert message.startswith(f"unknown {kind} '{name}'.")
    assert f"Did you mean '{hint}'?" in message and "Available:" in message


def test_task_files_register_by_path(pm, tmp_path):
    path = tmp_path / "loneliness.toml"
    path.write_text('name = "loneliness"\nkind = "single-label"\ninstruction = "判断孤独。"\n'
                    'labels = [{name = "孤独", aliases = ["lonely"]}, "不孤独"]\n', encoding="utf-8")

    class FilePlugin:
        @hookimpl
        def register_tasks(self, register):
            register(path)

    pm.register(FilePlugin(), name="file-plugin")
    task = pm.task("loneliness")
    assert task.parse("Label: lonely").labels == ("孤独",)
