"""`mentalglm bench`: every variant measured on the same posts, report files written, ratios consistent."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


def test_bench_table_json_and_chart(tiny_models, tmp_path):
    out = tmp_path / "bench"
    result = run_cli("bench", "--model", str(tiny_models["glm"]), "--backends", "llamacpp:f32,llamacpp:q8_0",
                     "--task", "depression", "--data", "sample:depression", "--posts", "4", "--rounds", "2",
                     "--max-new-tokens", "8", "--output-dir", str(out), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document == json.loads((out / "bench.json").read_text(encoding="utf-8")) | {"chart": document["chart"]}
    labels = [r["label"] for r in document["results"]]
    assert labels == ["llamacpp:f32", "llamacpp:q8_0"]
    for row in document["results"]:
        assert len(row["round_seconds"]) == 2 and row["posts"] == 4
        assert row["posts_per_second"] == pytest.approx(4 / (sum(row["round_seconds"]) / 2))  # median of two
        assert row["valid_rate"] == 1.0 and row["primary_metric"] == "weighted_f1"
        interval = row["primary_interval"]  # the same seeded bootstrap as evaluate's
        assert interval["method"] == "percentile bootstrap"
        assert interval["low"] <= row["primary_value"] <= interval["high"]
        assert 0 < row["p50_latency_s"] <= row["p95_latency_s"]
    first, second = document["results"]
    assert second["speed_vs_first"] == pytest.approx(second["posts_per_second"] / first["posts_per_second"])
    assert first["primary_delta"] is None  # the paired difference is against the first variant
    delta = second["primary_delta"]
    assert delta["delta"] == pytest.approx(second["primary_value"] - first["primary_value"])
    assert delta["low"] <= delta["delta"] <= delta["high"]
    assert {"cpu", "cores", "versions"} <= set(document["machine"])
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("*.gguf")) == ["glm-f32.gguf", "glm-q8_0.gguf"]


def test_bench_option_errors(tiny_models, tmp_path):
    bad = run_cli("bench", "--model", str(tiny_models["glm"]), "--backends", "llamacpp:q3", "--task", "depression",
                  "--data", "sample:depression", "--output-dir", str(tmp_path))
    assert bad.returncode == 1 and "unknown out type 'q3'" in bad.stderr
    unscoped = run_cli("bench", "--model", str(tiny_models["glm"]), "--backends", "llamacpp", "--task", "depression",
                       "--data", "sample:depression", "--output-dir", str(tmp_path), "-O", "n_threads=2")
    assert unscoped.returncode == 1 and "BACKEND.KEY=VALUE" in unscoped.stderr


def test_variants_carry_their_own_options(tmp_path):
    from mentalglm.bench import parse_variants
    from mentalglm.core.errors import MentalGLMError

    variants = parse_variants("llamacpp@parallel=1,llamacpp@parallel=8@n_ctx=512", "m-q8_0.gguf", tmp_path,
                              {"llamacpp": {"n_threads": "2"}})
    assert [v.label for v in variants] == ["llamacpp:q8_0@parallel=1", "llamacpp:q8_0@parallel=8@n_ctx=512"]
    assert variants[1].options == {"n_threads": "2", "parallel": "8", "n_ctx": "512"}
    with pytest.raises(MentalGLMError, match="not KEY=VALUE"):
        parse_variants("llamacpp@parallel", "m.gguf", tmp_path, {})


def test_paired_delta_is_zero_for_the_same_answers_and_follows_compare():
    from mentalglm.bench import paired_delta
    from mentalglm.core.plugin_manager import PluginManager
    from mentalglm.core.task import ParsedResponse
    from mentalglm.evaluation import statistics as st

    task = PluginManager().task("depression")
    golds = [("抑郁",), ("非抑郁",)] * 15
    first = [ParsedResponse(g, "", True) for g in golds]
    other = [ParsedResponse(("抑郁",), "", True)] * 30
    assert paired_delta(task, golds, first, first) == {"delta": 0.0, "low": 0.0, "high": 0.0}
    delta = paired_delta(task, golds, first, other)
    a, b = st.bootstrap_replicates(task, golds, [first, other], ["weighted_f1"])
    assert (delta["low"], delta["high"]) == st.percentile_interval(b["weighted_f1"] - a["weighted_f1"])
    assert delta["delta"] < 0 and delta["low"] <= delta["delta"] <= delta["high"]
