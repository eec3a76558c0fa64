"""Constraints and llama.cpp's own server on real vocabularies, side by side in one run.

Needs what ``.ci/real-models.sh`` sets up: ``MENTALGLM_REAL_MODELS`` (Gemma 3 270M q4_k_m, 262,144 tokens;
``qwen.tiktoken``, 151,643 ranks) and ``MENTALGLM_LLAMA_SERVER`` (llama.cpp's ``llama-server``); skips without
them. Two models:

- **gemma-262k**: Gemma 3 270M q4_k_m as shipped (a real model, ``--prompt plain``: it has no template);
- **glm-151k**: a GLM over the real 151k BPE vocabulary with the GLM-4 special tokens (MentalGLM's own
  vocabulary has 151,552 tokens), q8_0 for llama.cpp, float32 for torch — its random weights first taught
  the suicide-risk sample's answers for ``TEACH_STEPS`` steps (``bench_models.teach_answers``), so that it
  writes answers in the format as a real model does: a random model's choices are rejected by the grammar
  at nearly every step, which measured the grammar's fallback rather than its cost for a real model.

For each, the same posts (``sample:depression``, suicide-risk task) and budget (32 new tokens), in alternating
rounds, each round on posts no engine has seen before (``llama-server`` keeps every finished prompt in its
RAM prompt cache, ``--cache-ram``, and restores it when the same prompt comes again: repeated posts measured a cache
hit that a stream of new posts never gets). Both engines run without flash attention (the backend's default; the
server's own default, ``auto``, turns it on): llama.cpp in process ``parallel=8`` constrained and unconstrained,
``llama-server -np 8`` constrained through the ``openai`` backend (HTTP included, ``concurrency=8``), and for
glm-151k the torch backend constrained and unconstrained (batch 8). Reported: posts/s, in-process ÷ server,
constrained ÷ unconstrained time — each the median over rounds of the ratio within a round (the two sides
of a round ran the same posts), with the ratio of total times beside it. Targets (BENCHMARKS.md): in process
≥ 1.2× the server; constrained ≤ 1.2× unconstrained.

    MENTALGLM_REAL_MODELS=… MENTALGLM_LLAMA_SERVER=… pytest benchmarks/test_real_vocab.py --benchmark-only \
        --benchmark-json benchmarks/results/real_vocab.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import pytest

from bench_models import (
    SCALE,
    alternate,
    bench_threads,
    build_real_vocab_glm,
    depression_posts,
    llama_cpp_server_launcher,
    teach_answers,
)

REAL_MODELS = os.environ.get("MENTALGLM_REAL_MODELS", "")
LLAMA_SERVER = os.environ.get("MENTALGLM_LLAMA_SERVER", "")
pytestmark = pytest.mark.skipif(not (REAL_MODELS and LLAMA_SERVER),
                                reason="set MENTALGLM_REAL_MODELS and MENTALGLM_LLAMA_SERVER (.ci/real-models.sh)")

FULL = SCALE == "full"
N_POSTS = 16 if FULL else 4
#: Each round takes N_POSTS new posts, and one more warms up (bench_models.depression_posts says if too few exist).
ROUNDS = int(os.environ.get("MENTALGLM_BENCH_ROUNDS") or (3 if FULL else 1))
MAX_NEW_TOKENS = 32 if FULL else 16  # 16: room for the label line on any vocabulary
PARALLEL = 8
#: Full fine-tuning steps that make glm-151k write the answer format (loss 12 → under 3 in 20 steps on 67 answers).
TEACH_STEPS = 40 if FULL else 2
#: glm-151k's layers: small, so the vocabulary's share of each step is at least the real model's.
GLM_SHAPE = dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=1024) if FULL else \
    dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def _measure(benchmark, analyzers: dict, speed_pairs: dict, cost_pairs: dict, threads: int) -> dict:
    """Run every analyzer on new posts each round; ratios are paired by round (both sides of a ratio ran the
    same posts in a round), so a ratio never divides times measured on different posts.

    ``speed_pairs`` and ``cost_pairs``: name → (a, b), reported as b's time ÷ a's; for ``cost_pairs`` also per new
    token, since a constrained answer can be longer than the unconstrained one (the lines the model skipped).
    """
    measured: dict = {"load_average_before": os.getloadavg()[0]}
    available = depression_posts(N_POSTS * ROUNDS + 1)
    warm_up, rounds = available[-1:], [available[r * N_POSTS:(r + 1) * N_POSTS] for r in range(ROUNDS)]
    for analyzer in analyzers.values():  # warm-up and the server's canary, outside the clock
        analyzer.backend.preflight(["x"], response_format=analyzer.response_format)
        list(analyzer.analyze_many(warm_up))

    new_tokens: dict = {label: [] for label in analyzers}
    predictions: dict = {label: [] for label in analyzers}

    def workload(label, analyzer):
        unseen = iter(rounds)  # alternate() runs every workload once per round: round r gets the r-th posts

        def analyze():
            answered = list(analyzer.analyze_many(next(unseen)))
            missing = [p.id for p in answered if "completion_tokens" not in (p.usage or {})]
            assert not missing, f"{label}: no completion_tokens in the usage of posts {missing}"
            new_tokens[label].append(sum(p.usage["completion_tokens"] for p in answered))
            predictions[label].extend(answered)
        return analyze

    def run():
        seconds, _ = alternate({label: workload(label, a) for label, a in analyzers.items()}, ROUNDS)
        measured["seconds"] = seconds

    benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = measured["seconds"]
    pairs = {**speed_pairs, **cost_pairs}
    by_round = {name: [tb / ta for ta, tb in zip(seconds[a], seconds[b])] for name, (a, b) in pairs.items()}
    ms_per_token = {label: 1000 * sum(seconds[label]) / sum(new_tokens[label]) for label in analyzers}
    document = {
        "posts": N_POSTS, "rounds": ROUNDS, "new_posts_each_round": True, "flash_attn": False,
        "max_new_tokens": MAX_NEW_TOKENS, "parallel": PARALLEL,
        "threads": threads, "load_average_before": measured["load_average_before"],
        "seconds": seconds, "posts_per_second": {k: N_POSTS * ROUNDS / sum(v) for k, v in seconds.items()},
        "valid": {label: sum(p.valid for p in out) / len(out) for label, out in predictions.items()},
        "new_tokens": new_tokens, "ms_per_new_token": ms_per_token,
        # The headline: the median over rounds of the ratio within each round.
        "ratios": {name: statistics.median(values) for name, values in by_round.items()},
        "ratios_by_round": by_round,
        "ratios_of_totals": {name: sum(seconds[b]) / sum(seconds[a]) for name, (a, b) in pairs.items()},
        "ratios_per_new_token": {name: ms_per_token[b] / ms_per_token[a] for name, (a, b) in cost_pairs.items()},
    }
    benchmark.extra_info.update(document)
    print(json.dumps(document, ensure_ascii=False, indent=1), file=sys.stderr)
    return document


def _llamacpp(model: Path, prompt: str, constrained: bool, threads: int):
    from mentalglm import Analyzer

    return Analyzer(task="suicide-risk", backend="llamacpp", model=str(model), prompt=prompt, redact=False,
                    batch_size=N_POSTS, options={"parallel": PARALLEL, "n_ctx": 1024, "n_threads": threads,
                                                "max_new_tokens": MAX_NEW_TOKENS, "constrained": constrained})


def _served(base: str, prompt: str):
    from mentalglm import Analyzer

    return Analyzer(task="suicide-risk", backend="openai", model="m", prompt=prompt, redact=False,
                    batch_size=N_POSTS, options={"base_url": f"{base}/v1", "max_new_tokens": MAX_NEW_TOKENS,
                                                 "concurrency": PARALLEL})


@pytest.fixture(scope="module")
def threads():
    return bench_threads()


def _run(benchmark, model: Path, log_dir: Path, threads: int, analyzers_for, speed_pairs: dict,
         cost_pairs: dict) -> dict:
    """Start ``llama-server -np 8`` on ``model``, build the analyzers (given its URL), measure them, close all."""
    with llama_cpp_server_launcher()(LLAMA_SERVER, model, log_dir, parallel=PARALLEL, n_threads=threads) as (base, _):
        analyzers = analyzers_for(base)
        try:
            return _measure(benchmark, analyzers, speed_pairs, cost_pairs, threads)
        finally:
            for analyzer in analyzers.values():
                analyzer.close()


def test_gemma_262k_in_process_vs_llama_server(benchmark, threads, tmp_path):
    model = Path(REAL_MODELS) / "gemma-3-270m-q4_k_m.gguf"
    document = _run(benchmark, model, tmp_path, threads, lambda base: {
        "in-process constrained": _llamacpp(model, "plain", True, threads),
        "in-process unconstrained": _llamacpp(model, "plain", False, threads),
        "llama-server constrained": _served(base, "plain")}, {
        "in-process ÷ server (posts/s)": ("in-process constrained", "llama-server constrained")}, {
        "constrained ÷ unconstrained (time)": ("in-process unconstrained", "in-process constrained")})
    assert document["valid"]["in-process constrained"] == 1.0
    assert document["valid"]["llama-server constrained"] == 1.0


def test_glm_151k_llamacpp_server_and_torch(benchmark, threads, tmp_path_factory, torch_threads):
    pytest.importorskip("torch", reason="the torch half needs the torch extra")
    from mentalglm import Analyzer
    from mentalglm.converters.gguf_export import export_gguf

    root = tmp_path_factory.mktemp("glm-151k")
    model_dir = build_real_vocab_glm(root, Path(REAL_MODELS) / "qwen.tiktoken", **GLM_SHAPE)
    taught = teach_answers(model_dir, steps=TEACH_STEPS)
    gguf = export_gguf(model_dir, root / "glm-151k-q8_0.gguf", outtype="q8_0").path

    def torch_analyzer(constrained):
        return Analyzer(task="suicide-risk", backend="torch", model=str(model_dir), redact=False, batch_size=PARALLEL,
                        options={"max_new_tokens": MAX_NEW_TOKENS, "constrained": constrained, "dtype": "float32"})

    document = _run(benchmark, gguf, root, threads, lambda base: {
        "in-process constrained": _llamacpp(gguf, "glm4-chat", True, threads),
        "in-process unconstrained": _llamacpp(gguf, "glm4-chat", False, threads),
        "llama-server constrained": _served(base, "glm4-chat"),
        "torch constrained": torch_analyzer(True), "torch unconstrained": torch_analyzer(False)}, {
        "in-process ÷ server (posts/s)": ("in-process constrained", "llama-server constrained")}, {
        "constrained ÷ unconstrained (time)": ("in-process unconstrained", "in-process constrained"),
        "torch constrained ÷ unconstrained (time)": ("torch unconstrained", "torch constrained")})
    benchmark.extra_info["taught"] = taught
    assert document["valid"]["in-process constrained"] == 1.0
    assert document["valid"]["torch constrained"] == 1.0
