"""How many CPU threads a backend should use by default without oversubscribing the machine.

All logical cores is the wrong default: hyper-threads share a core's arithmetic units, and on
a shared machine other work already keeps some cores busy. Measured on a loaded 2-core
machine, llama.cpp with one thread ran 4× faster than with two (30 s against 124 s).
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity mask, or all of them)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], cpuinfo: str | None = None) -> int:
    """Distinct physical cores among ``cpus`` (Linux ``/proc/cpuinfo``; else the CPU count)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return len(cpus)
    cores, processor, package = set(), None, "0"
    for line in cpuinfo.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processor = int(value)
        elif key == "physical id":
            package = value
        elif key == "core id" and processor in cpus:
            cores.add((package, value))
        elif not line.strip():
            processor, package = None, "0"
    return len(cores) or len(cpus)


def default_threads(load: float | None = None, cpuinfo: str | None = None) -> int:
    """Physical cores this process may use, less those other work keeps busy (1-minute load, rounded down).

    Args:
        load: the load average to assume (default: the system's 1-minute load average).
        cpuinfo: ``/proc/cpuinfo`` text (tests).

    Returns:
        At least 1.
    """
    cores = physical_cores(usable_cpus(), cpuinfo)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - int(load)))
