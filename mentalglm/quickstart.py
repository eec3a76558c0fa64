"""``mentalglm quickstart``: the whole pipeline offline, on the synthetic samples, in a few minutes.

1. split each task's synthetic sample into training and held-out posts (every 5th post, and the
   very long ones, held out);
2. build a small demo GLM (random weights, the tiny GLM-4-style tokenizer) — once, cached;
3. fine-tune a LoRA adapter on the training posts of all four tasks (``mentalglm train``'s code);
4. merge it and export a q8_0 GGUF (``mentalglm export``'s code);
5. analyse a few held-out posts with llama.cpp, showing label and explanation;
6. evaluate every task on its held-out posts and print the metric table.

The demo model is a **pipeline demo, not a clinical model**: a few hundred thousand parameters
trained for 120 steps on synthetic posts. Its scores are printed as they come out. Everything is
cached (``--cache-dir``, default ``~/.cache/mentalglm/quickstart``); a rerun reuses what exists.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from mentalglm.core.data import read_records, resolve_path

TASKS = ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway")
#: Demo model and training recipe; bump VERSION when they change so old caches are not reused.
VERSION = "v1"
MODEL = dict(arch="glm", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
             max_position_embeddings=1024, seed=0)
TRAINING = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=5e-3, warmup_ratio=0.05,
                batch_size=8, max_steps=120, max_length=512, save_every=40, seed=0)
HELD_OUT_EVERY = 5
#: Posts longer than this are held out too: they would not fit the demo's training length.
LONGEST_TRAINING_POST = 300


def default_cache_dir() -> Path:
    """``$MENTALGLM_CACHE/quickstart`` or ``~/.cache/mentalglm/quickstart``."""
    root = os.environ.get("MENTALGLM_CACHE") or Path.home() / ".cache" / "mentalglm"
    return Path(root) / "quickstart"


def split_samples(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Write ``{task}-train.jsonl`` and ``{task}-heldout.jsonl`` (every 5th record and the very long ones held out)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for task in TASKS:
        records = read_records(resolve_path(f"sample:{task}"))
        train, held = folder / f"{task}-train.jsonl", folder / f"{task}-heldout.jsonl"
        with open(train, "w", encoding="utf-8") as t, open(held, "w", encoding="utf-8") as h:
            for index, record in enumerate(records):
                line = json.dumps({"id": record.id, "instruction": record.instruction, "input": record.input,
                                   "output": record.output, "synthetic": True}, ensure_ascii=False)
                held_out = index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 or len(record.input) > LONGEST_TRAINING_POST
                (h if held_out else t).write(line + "\n")
        splits[task] = (train, held)
    return splits


def run_quickstart(cache_dir: str | Path | None = None, output_dir: str | Path = "runs/quickstart",
                   say: Callable[[str], None] = print, steps: int | None = None) -> dict:
    """Run the demo end to end; returns ``{task: metrics document}``.

    Args:
        cache_dir: where the demo model, adapter and GGUF are cached.
        output_dir: where each task's evaluation run goes (predictions, metrics, report).
        say: where progress and results are written (stdout by default).
        steps: training steps (default 120).
    """
    import torch

    from mentalglm.converters.gguf_export import export_gguf
    from mentalglm.converters.tiny import build_tiny_glm
    from mentalglm.core.analyzer import Analyzer
    from mentalglm.core.data import read_posts
    from mentalglm.core.evaluation import evaluate
    from mentalglm.training.config import StageConfig, TrainConfig
    from mentalglm.training.loop import train

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache = cache / VERSION
    started = time.time()
    torch.set_num_threads(min(os.cpu_count() or 1, 4))
    say("mentalglm quickstart — a PIPELINE DEMO on synthetic posts, not a clinical model.")
    say(f"cache: {cache}")

    splits = split_samples(cache / "data")
    base = cache / "base"
    if not (base / "config.json").exists():
        say("[1/5] building the demo GLM (random weights, GLM-4-style tokenizer) …")
        build_tiny_glm(base, **MODEL)
    else:
        say("[1/5] demo GLM: cached")

    say("[2/5] fine-tuning a LoRA adapter on the four tasks' training posts …")
    config = TrainConfig(model=str(base), output=str(cache / "lora"), device="cpu", quiet=True,
                         stages=[StageConfig(data=[str(splits[t][0]) for t in TASKS], name="c-imhi-synthetic")],
                         **{**TRAINING, **({"max_steps": steps} if steps else {})})
    result = train(config)
    curve = json.loads((cache / "lora" / "loss.json").read_text(encoding="utf-8"))
    losses = [point["loss"] for point in (curve if isinstance(curve, list) else curve.get("steps", []))]
    if losses:
        head, tail = losses[: min(10, len(losses))], losses[-min(10, len(losses)):]
        say(f"      {len(losses)} steps, loss {sum(head) / len(head):.2f} → {sum(tail) / len(tail):.2f}"
            + (" (cached)" if result.already_finished else ""))

    gguf = cache / "demo-q8_0.gguf"
    if not gguf.exists():
        say("[3/5] merging the adapter and exporting a q8_0 GGUF for llama.cpp …")
        export_gguf(base, gguf, outtype="q8_0", adapter_dir=result.adapter, name="mentalglm-quickstart-demo")
    else:
        say("[3/5] q8_0 GGUF: cached")
    say(f"      {gguf} ({gguf.stat().st_size / 2**20:.1f} MiB)")

    say("[4/5] analysing held-out posts with llama.cpp (answers constrained to each task's format):")
    options = {"n_ctx": 1024, "max_new_tokens": 64}
    documents = {}
    for task in TASKS:
        posts = read_posts(splits[task][1], None)
        with Analyzer(task=task, backend="llamacpp", model=str(gguf), options=options) as analyzer:
            shown = next(analyzer.analyze_many(posts[:1]))
            text = posts[0].text.replace("\n", " ")
            say(f"  [{task}] post: {text[:60]}{'…' if len(text) > 60 else ''}")
            if shown.fields is not None:
                say("      " + "；".join(f"{k}：{v[:20]}" for k, v in shown.fields.items()))
            else:
                say(f"      标签：{'、'.join(shown.labels) or '—'}")
            explanation = shown.explanation.replace("\n", " ")
            say(f"      解释：{explanation[:80]}{'…' if len(explanation) > 80 else ''}")

    say("[5/5] evaluating every task on its held-out synthetic posts …")
    rows = []
    for task in TASKS:
        run_dir = Path(output_dir) / task
        shutil.rmtree(run_dir, ignore_errors=True)  # a demo run is redone whole, never resumed from another model
        with Analyzer(task=task, backend="llamacpp", model=str(gguf), options=options) as analyzer:
            posts = read_posts(splits[task][1], analyzer.task)
            document = evaluate(analyzer, posts, run_dir, data=str(splits[task][1]), progress=False)
        documents[task] = document
        counts = document["counts"]
        rows.append((task, counts["posts"], counts["invalid"], document["primary_metric"],
                     f"{document['primary_value']:.3f}"))
    width = max(len(r[0]) for r in rows)
    say(f"  {'task':<{width}}  posts  invalid  primary metric")
    for task, n, invalid, metric, value in rows:
        say(f"  {task:<{width}}  {n:>5}  {invalid:>7}  {metric} = {value}")
    say(f"  (per-post predictions, metrics.json and report.md under {output_dir}/)")
    say(f"done in {time.time() - started:.0f} s. These scores belong to a tiny demo model trained for a few seconds on "
        "synthetic posts: they show the pipeline works, not how well MentalGLM works.")
    say("\nNext steps with the real MentalGLM weights (download them on a machine with internet):\n"
        "  mentalglm convert --model MentalGLM-chat -o MentalGLM-chat-hf          # for the torch backend\n"
        "  mentalglm export --model MentalGLM-chat --outtype q4_k_m -o mentalglm-chat-q4_k_m.gguf\n"
        "  mentalglm analyze --task suicide-risk --model mentalglm-chat-q4_k_m.gguf -O gpu_memory=6GiB \"……\"\n"
        "  mentalglm evaluate --task depression --model mentalglm-chat-q4_k_m.gguf --data your-test.jsonl "
        "--output-dir runs/dep\n"
        "  mentalglm train --model glm-4-9b-chat-hf --data your-c-imhi.jsonl --task depression -o runs/lora")
    return documents
