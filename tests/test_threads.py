"""The default CPU thread count: physical cores, less the ones other work keeps busy."""

from __future__ import annotations

from mentalglm.core import threads

# Two physical cores with two hyper-threads each (processors 0–3), one package.
HYPERTHREADED = "".join(f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p // 2}\n\n" for p in range(4))


def test_hyper_threads_count_once(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: {0, 1, 2, 3})
    assert threads.physical_cores({0, 1, 2, 3}, HYPERTHREADED) == 2
    assert threads.default_threads(load=0.0, cpuinfo=HYPERTHREADED) == 2


def test_only_the_cpus_this_process_may_use_count(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: {0, 1})  # both hyper-threads of core 0
    assert threads.default_threads(load=0.0, cpuinfo=HYPERTHREADED) == 1


def test_busy_cores_are_left_alone_and_at_least_one_thread_remains(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: {0, 1, 2, 3})
    assert threads.default_threads(load=1.3, cpuinfo=HYPERTHREADED) == 1
    assert threads.default_threads(load=9.0, cpuinfo=HYPERTHREADED) == 1


def test_without_cpuinfo_core_ids_the_cpu_count_is_used():
    assert threads.physical_cores({0, 1, 2}, "processor\t: 0\n\nprocessor\t: 1\n\n") == 3


def test_this_machine_gets_a_sane_default():
    count = threads.default_threads()
    assert 1 <= count <= len(threads.usable_cpus())
