"""The data reader on big files: posts/s and peak memory of streaming a 1M-line JSONL and TSV file.

What is measured, per layout:

- ``jsonl-ids``: ``{"id": "p17", "text": …, "label": "抑郁"}`` — JSON parsing, a label read by the
  task's matcher (cached per spelling), explicit ids (the duplicate-id table is in use);
- ``json-array``: C-IMHI ``{"instruction", "input", "output"}`` records in one JSON array (how
  the authors' releases come) — streamed item by item (:mod:`mentalglm.data.json_array`), gold
  labels read from each ``output``, ids are positions;
- ``tsv-numeric``: a SOS-HL-1K-style ``.csv`` that is tab-separated, ``id<TAB>label<TAB>comment``
  with 0/1 labels through ``--label-map`` — delimiter sniffing, CSV splitting, the label map;
- ``tsv-positional``: the same without the id column (ids are positions: no id table at all).

Speed: :func:`mentalglm.data.readers.iter_posts` consumed once per round (the posts are dropped as
they come, as a streaming run would), posts/s from the median round. Memory: each layout is read
in a fresh subprocess at two sizes (a quarter, then the full file); after the imports the kernel's
peak-RSS mark is reset (``/proc/self/clear_refs``) and ``VmHWM`` read after the pass, so "growth"
is what reading cost. Constant memory shows as growth that does not follow the file (a fixed cost of
at most ``FIXED_MIB``, the same at both sizes): the only
part that grows is the duplicate-id table, and only when the file has ids of its own — 8 bytes
per slot, at most 2.7 slots per post, plus the old table while it doubles (≤ 32 bytes per post).

    MENTALGLM_BENCH_SCALE=smoke pytest benchmarks/test_data_reader.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mentalglm.data.json_array import CHUNK

SCALE = os.environ.get("MENTALGLM_BENCH_SCALE", "full")
LINES = 1_000_000 if SCALE == "full" else 20_000
ROUNDS = 3 if SCALE == "full" else 1
MIB = 2**20
#: What a first pass may cost whatever the file size (lazily imported parsers, caches, buffers); the JSON-array
#: path measured 27.7 MiB at both sizes (2026-12-05). That is its read-ahead of CHUNK characters (4 bytes each once
#: the text holds an emoji) in several copies at once — the bytes read, their decoded text, the unread rest of
#: the buffer and the buffer joined with the new text: the peak follows CHUNK (3.1 / 7.8 / 27.7 MiB with
#: 64k / 256k / 1M characters, 80k records, in a one-off diagnostic run), not the file.
FIXED_MIB = 32
#: Chunks the JSON-array reader reads before its peak settles (80k records, 8 chunks: 25.5 MiB; 250k, 37 chunks:
#: 27.7 MiB; 20k, 2 chunks: 12.6 MiB): below that — CI's smoke size — only the bound is checked.
STEADY_CHUNKS = 16
#: Allocator noise between the two sizes of one layout.
SLACK_MIB = 4
_TEXTS = ("最近总是提不起劲，什么都不想做，晚上也睡不着。", "今天和朋友去爬山了，心情很好！",
          "考试又没考好，感觉自己一无是处……", "周末打算去看电影，有人一起吗？😂",
          "他说“活着没意思”，我有点担心他。")

_CHILD = textwrap.dedent("""
    import json, sys
    from mentalglm.data.readers import iter_posts
    from mentalglm.data.mapping import DataMapping
    from mentalglm.core.plugin_manager import PluginManager

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

    spec = json.loads(sys.argv[1])
    task = PluginManager(load_entry_points=False).task(spec["task"])
    mapping = DataMapping(label_map=spec["label_map"]) if spec["label_map"] else None
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        reset = True
    except OSError:
        reset = False
    baseline = status("VmHWM")
    count = sum(1 for _ in iter_posts(spec["path"], task, mapping))
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "posts": count, "reset": reset}))
""")

LAYOUTS = {
    "jsonl-ids": ("depression", None),
    "json-array": ("depression", None),
    "tsv-numeric": ("suicide-risk", {"0": "低自杀风险", "1": "高自杀风险"}),
    "tsv-positional": ("suicide-risk", {"0": "低自杀风险", "1": "高自杀风险"}),
}


def _write(path: Path, layout: str, lines: int) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if layout == "jsonl-ids":
            for i in range(lines):
                handle.write(json.dumps({"id": f"p{i}", "text": _TEXTS[i % 5], "label": "抑郁" if i % 3 else "非抑郁"},
                                        ensure_ascii=False) + "\n")
        elif layout == "json-array":  # C-IMHI records in one JSON array, as its releases come
            handle.write("[\n")
            for i in range(lines):
                record = {"instruction": "判断是否抑郁。", "input": _TEXTS[i % 5],
                          "output": f"标签：{'抑郁' if i % 3 else '非抑郁'}\n解释：……"}
                handle.write(("" if i == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
            handle.write("\n]\n")
        elif layout == "tsv-numeric":
            handle.write("id\tlabel\tcomment\n")
            for i in range(lines):
                handle.write(f"{i}\t{i % 2}\t{_TEXTS[i % 5]}\n")
        else:
            handle.write("label\tcomment\n")
            for i in range(lines):
                handle.write(f"{i % 2}\t{_TEXTS[i % 5]}\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data-reader")
    suffix = {"jsonl-ids": ".jsonl", "json-array": ".json", "tsv-numeric": ".csv", "tsv-positional": ".csv"}
    made = {}
    for layout in LAYOUTS:
        made[layout] = {n: _write(folder / f"{layout}-{n}{suffix[layout]}", layout, n) for n in (LINES // 4, LINES)}
    return made


def _characters(path: Path) -> int:
    """Characters in a UTF-8 file, read a chunk at a time."""
    with open(path, encoding="utf-8") as handle:
        return sum(len(chunk) for chunk in iter(lambda: handle.read(CHUNK), ""))


def _peak(path: Path, layout: str) -> dict:
    task, label_map = LAYOUTS[layout]
    env = {**os.environ, "MENTALGLM_LOAD_PLUGINS": ""}
    result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"path": str(path), "task": task,
                                                                       "label_map": label_map})],
                            capture_output=True, text=True, env=env, timeout=1800, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reader_throughput_and_peak_memory(benchmark, files, layout):
    from mentalglm.core.plugin_manager import PluginManager
    from mentalglm.data.mapping import DataMapping
    from mentalglm.data.readers import iter_posts

    task_name, label_map = LAYOUTS[layout]
    task = PluginManager(load_entry_points=False).task(task_name)
    mapping = DataMapping(label_map=label_map) if label_map else None
    path = files[layout][LINES]

    rounds: list[float] = []

    def consume() -> int:
        # Timed here too: with --benchmark-disable (CI's smoke run) pytest-benchmark keeps no stats.
        started = time.perf_counter()
        count = sum(1 for _ in iter_posts(path, task, mapping))
        rounds.append(time.perf_counter() - started)
        return count

    count = benchmark.pedantic(consume, rounds=ROUNDS, iterations=1)
    assert count == LINES
    seconds = statistics.median(rounds)
    quarter, full = _peak(files[layout][LINES // 4], layout), _peak(path, layout)
    growth = {n: (run["peak"] - run["baseline"]) / MIB for n, run in ((LINES // 4, quarter), (LINES, full))}
    id_table = 0 if layout in ("tsv-positional", "json-array") else 32 * LINES / MIB  # see the module docstring
    benchmark.extra_info.update({
        "layout": layout, "lines": LINES, "file_mib": path.stat().st_size / MIB,
        "posts_per_second": LINES / seconds, "mib_per_second": path.stat().st_size / MIB / seconds,
        "peak_growth_mib_quarter": growth[LINES // 4], "peak_growth_mib_full": growth[LINES],
        "id_table_bound_mib": id_table, "peak_reset": full["reset"]})
    assert full["posts"] == LINES and quarter["posts"] == LINES // 4
    if full["reset"]:  # a fixed cost, and from a quarter of the file to all of it, only the id table grows
        assert growth[LINES] <= FIXED_MIB + id_table, benchmark.extra_info
        # Flat once the JSON-array reader's buffer is at full size at both sizes (line readers: always).
        if layout != "json-array" or _characters(files[layout][LINES // 4]) >= STEADY_CHUNKS * CHUNK:
            assert growth[LINES] - growth[LINES // 4] <= id_table * 3 / 4 + SLACK_MIB, benchmark.extra_info
