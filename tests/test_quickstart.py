"""End to end: train a tiny GLM (loss goes down), merge and export q8_0, llama.cpp agrees with torch + adapter;
and `mentalglm quickstart` runs to the end."""

from __future__ import annotations

import json

import pytest

from mentalglm import Analyzer
from mentalglm.core.data import read_posts


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart pipeline with a short training run, its printed lines and its cache."""
    pytest.importorskip("llama_cpp")
    from mentalglm.quickstart import VERSION, run_quickstart

    cache, runs = tmp_path_factory.mktemp("qs-cache"), tmp_path_factory.mktemp("qs-runs")
    lines: list[str] = []
    documents = run_quickstart(cache_dir=cache, output_dir=runs, say=lines.append, steps=40)
    return {"cache": cache / VERSION, "runs": runs, "lines": lines, "documents": documents}


def test_quickstart_runs_to_the_end_and_says_what_it_is(quickstart):
    text = "\n".join(quickstart["lines"])
    assert "PIPELINE DEMO" in text and "not a clinical model" in text
    assert "Next steps with the real MentalGLM weights" in text
    for task in ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway"):
        document = quickstart["documents"][task]
        assert document["backend"] == "llamacpp" and document["counts"]["invalid"] == 0  # grammar-constrained
        assert (quickstart["runs"] / task / "report.md").exists()
        assert f"{task}" in text and f"{document['primary_value']:.3f}" in text


def test_training_lowered_the_loss(quickstart):
    curve = json.loads((quickstart["cache"] / "lora" / "loss.json").read_text(encoding="utf-8"))
    losses = [p["loss"] for p in (curve if isinstance(curve, list) else curve["steps"])]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def test_exported_q8_0_agrees_with_torch_and_the_unmerged_adapter(quickstart):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.torch_backend import TorchBackend

    cache = quickstart["cache"]
    posts = read_posts(cache / "data" / "depression-heldout.jsonl")[:6]
    options = {"max_new_tokens": 24}
    with TorchBackend(str(cache / "base"), {**options, "adapter": str(cache / "lora" / "adapter"),
                                            "dtype": "float32"}) as torch_backend, \
            LlamaCppBackend(str(cache / "demo-q8_0.gguf"), {**options, "n_ctx": 1024, "cache_type": "f32"}) as llama:
        from_torch = [p.output for p in Analyzer(task="depression", backend=torch_backend).analyze_many(posts)]
        from_llama = [p.output for p in Analyzer(task="depression", backend=llama).analyze_many(posts)]
    assert from_torch == from_llama


def test_a_rerun_reuses_the_cache(quickstart):
    from mentalglm.quickstart import run_quickstart

    lines: list[str] = []
    run_quickstart(cache_dir=quickstart["cache"].parent, output_dir=quickstart["runs"], say=lines.append, steps=40)
    text = "\n".join(lines)
    assert "demo GLM: cached" in text and "q8_0 GGUF: cached" in text and "(cached)" in text
