"""Converter benchmark: export time and peak RSS against model size, f16 and q8_0.

Target: the export's peak RSS above the process's baseline stays ≤ 1.5 × the largest source
tensor + 64 MiB — memory follows the largest tensor, not the model. Each export runs in a
fresh subprocess; after its imports the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and ``VmHWM`` is read after the export (``ru_maxrss`` would start from the parent's size).

    pytest benchmarks/test_converter.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: (label, hidden, layers, ffn) — "large" is a few hundred MB in f32.
SIZES = {"full": [("small", 256, 4, 1024), ("large", 1024, 8, 4096)], "smoke": [("small", 128, 2, 256)]}
SCALE = os.environ.get("MENTALGLM_BENCH_SCALE", "full")
CONSTANT = 64 << 20

_CHILD = textwrap.dedent("""
    import json, sys, time
    from mentalglm.converters.gguf_export import export_gguf
    from mentalglm.modelfiles.safetensors import SafetensorsCheckpoint
    import gguf, numpy  # imported before the baseline so it counts as constant
    model, out, outtype = sys.argv[1:4]
    largest = max(e.nbytes for e in SafetensorsCheckpoint(model).entries.values())

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

    with open("/proc/self/clear_refs", "w") as handle:  # peak := current RSS
        handle.write("5")
    baseline = status("VmHWM")
    start = time.perf_counter()
    result = export_gguf(model, out, outtype=outtype)
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    print(json.dumps({"seconds": seconds, "peak": peak, "baseline": baseline, "largest": largest,
                      "file_bytes": result.file_bytes}))
""")


def _build(root: Path, hidden: int, layers: int, ffn: int) -> Path:
    code = ("import sys; from mentalglm.demo.tiny import build_tiny_glm; "
            "build_tiny_glm(sys.argv[1], arch='glm', hidden_size=int(sys.argv[2]), num_layers=int(sys.argv[3]), "
            "num_heads=8, num_kv_heads=2, intermediate_size=int(sys.argv[4]), seed=0)")
    subprocess.run([sys.executable, "-c", code, str(root), str(hidden), str(layers), str(ffn)], check=True,
                   capture_output=True)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Models built on first use, once per module."""
    root = tmp_path_factory.mktemp("bench-models")
    cache: dict[str, Path] = {}

    def get(label, hidden, layers, ffn):
        if label not in cache:
            cache[label] = _build(root / label, hidden, layers, ffn)
        return cache[label]

    return get


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
@pytest.mark.parametrize("size", SIZES[SCALE], ids=lambda s: s[0])
def test_export_time_and_peak_rss(benchmark, built, outtype, size, tmp_path):
    label = size[0]
    model = built(*size)
    runs = []

    def export():
        out = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(tmp_path / "m.gguf"), outtype],
                             check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(export, rounds=1, iterations=1)
    run = runs[-1]
    model_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    growth = run["peak"] - run["baseline"]
    benchmark.extra_info.update({"size": label, "model_mib": model_bytes / 2**20,
                                 "largest_tensor_mib": run["largest"] / 2**20,
                                 "peak_growth_mib": growth / 2**20, "export_seconds": run["seconds"],
                                 "ratio_growth_to_largest": growth / run["largest"],
                                 "ratio_growth_to_model": growth / model_bytes})
    assert growth <= 1.5 * run["largest"] + CONSTANT, benchmark.extra_info
