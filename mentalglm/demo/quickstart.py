"""``mentalglm quickstart``: the whole pipeline offline, on the synthetic samples, in well under a minute.

1. split each task's synthetic sample into training and held-out posts (every 5th post, and the
   very long ones, held out);
2. build a small demo GLM (random weights, the tiny GLM-4-style tokenizer) — once, cached;
3. fine-tune a LoRA adapter on the training posts of all four tasks (``mentalglm train``'s code);
4. merge it and export a q8_0 GGUF (``mentalglm export``'s code);
5. analyse one held-out post per task with llama.cpp, showing label and explanation;
6. evaluate every task on (up to :data:`EVAL_POSTS` of) its held-out posts and print the metric table.

The demo model is a **pipeline demo, not a clinical model**: a few hundred thousand parameters
trained for :data:`TRAINING` ``max_steps`` steps on synthetic posts. Its scores are printed as
they come out. Everything is cached (``--cache-dir``, default ``~/.cache/mentalglm/quickstart``);
a rerun reuses what exists. The wall-clock time of the whole run and of each phase is printed at
the end and written to ``OUTPUT_DIR/timing.json``, so CI can record it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from mentalglm.data.readers import read_records, resolve_path

TASKS = ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway")
#: Demo model and training recipe; bump VERSION when they change so old caches are not reused.
VERSION = "v2"
MODEL = dict(arch="glm", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
             max_position_embeddings=1024, seed=0)
#: Half the steps of v1 at twice the learning rate: the loss falls from ~7.3 to ~5.4 (v1: 4.8
#: after 120 steps) in half the time.
TRAINING = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=1e-2, warmup_ratio=0.05,
                batch_size=8, max_steps=60, max_length=512, save_every=30, seed=0)
HELD_OUT_EVERY = 5
#: Posts longer than this are held out too: they would not fit the demo's training length.
LONGEST_TRAINING_POST = 300
#: Held-out posts evaluated per task: enough for a metric table, few enough to stay quick.
EVAL_POSTS = 10
#: llama.cpp settings of the analysis and evaluation phases.
LLAMA_OPTIONS = {"n_ctx": 1024, "max_new_tokens": 64}
#: Threads for the demo model: its matrices are tiny, so a second thread buys little on an
#: idle machine and costs many times over on a busy one (spinning OpenMP/ggml threads).
MAX_THREADS = 2


def default_cache_dir() -> Path:
    """``$MENTALGLM_CACHE/quickstart`` or ``~/.cache/mentalglm/quickstart``."""
    root = os.environ.get("MENTALGLM_CACHE") or Path.home() / ".cache" / "mentalglm"
    return Path(root) / "quickstart"


def demo_threads() -> int:
    """CPU threads for torch and llama.cpp: the idle physical cores this process may use, at most 2."""
    from mentalglm.core.threads import default_threads

    return max(1, min(MAX_THREADS, default_threads()))


class Timing:
    """Wall-clock seconds of the quickstart's phases, and whether each reused the cache.

    Example:
        >>> timing = Timing()
        >>> with timing.phase("build") as phase:
        ...     phase["cached"] = True
        >>> sorted(timing.to_dict()["phases"])
        ['build']
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stopped: float | None = None
        self.phases: dict[str, dict] = {}

    def stop(self) -> None:
        """End the clock, so the printed summary and ``timing.json`` report the same total."""
        self.stopped = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict]:
        """Time the ``with`` block as phase ``name``; the block may set ``cached`` on the yielded dict."""
        entry = {"seconds": 0.0, "cached": False}
        start = time.perf_counter()
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 3)
            self.phases[name] = entry

    @property
    def total(self) -> float:
        """Seconds from creation to :meth:`stop` (or to now, while running)."""
        return (self.stopped or time.perf_counter()) - self.started

    def summary(self) -> str:
        """``quickstart took N s: build X s, train Y s, …`` (``(cached)`` after phases that reused the cache)."""
        parts = [f"{name} {entry['seconds']:.1f} s" + (" (cached)" if entry["cached"] else "")
                 for name, entry in self.phases.items()]
        age = process_seconds()
        since_start = f" ({age:.1f} s since the process started)" if age is not None else ""
        return f"quickstart took {round(self.total, 3):.1f} s{since_start}: " + ", ".join(parts)

    def to_dict(self, **context) -> dict:
        """The ``timing.json`` document: total, phases and ``context`` (threads, cores, load, …)."""
        cached = [entry["cached"] for name, entry in self.phases.items() if name in ("build", "train", "export")]
        return {"total_seconds": round(self.total, 3), "process_seconds": process_seconds(), "cold": not any(cached),
                "phases": self.phases, **context}


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


def _build_model(base: Path, say, phase: dict) -> None:
    from mentalglm.demo.tiny import build_tiny_glm

    if (base / "config.json").exists():
        phase["cached"] = True
        say("[1/5] demo GLM: cached")
        return
    say("[1/5] building the demo GLM (random weights, GLM-4-style tokenizer) …")
    partial = base.with_name(base.name + ".partial")  # a killed build must not look cached
    shutil.rmtree(partial, ignore_errors=True)
    build_tiny_glm(partial, **MODEL)
    shutil.rmtree(base, ignore_errors=True)
    partial.replace(base)


def _train_adapter(cache: Path, base: Path, splits: dict, say, phase: dict, steps: int | None):
    from mentalglm.training.config import StageConfig, TrainConfig
    from mentalglm.training.loop import train

    say("[2/5] fine-tuning a LoRA adapter on the four tasks' training posts …")
    config = TrainConfig(model=str(base), output=str(cache / "lora"), device="cpu", quiet=True,
                         stages=[StageConfig(data=[str(splits[t][0]) for t in TASKS], name="c-imhi-synthetic")],
                         **{**TRAINING, **({"max_steps": steps} if steps else {})})
    result = train(config)
    phase["cached"] = result.already_finished
    curve = json.loads((cache / "lora" / "loss.json").read_text(encoding="utf-8"))
    losses = [point["loss"] for point in curve["steps"]]
    if losses:
        head, tail = losses[: min(10, len(losses))], losses[-min(10, len(losses)):]
        say(f"      {len(losses)} steps, loss {sum(head) / len(head):.2f} → {sum(tail) / len(tail):.2f}"
            + (" (cached)" if result.already_finished else ""))
    return result


def _export(base: Path, adapter: Path, gguf: Path, say, phase: dict) -> None:
    from mentalglm.converters.gguf_export import export_gguf

    if gguf.exists():
        phase["cached"] = True
        say("[3/5] q8_0 GGUF: cached")
    else:
        say("[3/5] merging the adapter and exporting a q8_0 GGUF for llama.cpp …")
        export_gguf(base, gguf, outtype="q8_0", adapter_dir=adapter, name="mentalglm-quickstart-demo")
    say(f"      {gguf} ({gguf.stat().st_size / 2**20:.1f} MiB)")


def _show(task: str, post, prediction, fmt, say) -> None:
    """One analysed post as the user sees it: the post, then the answer in the task's own format."""
    text = post.text.replace("\n", " ")
    say(f"  [{task}] post: {text[:60]}{'…' if len(text) > 60 else ''}")
    for line in fmt.answer_lines(prediction.labels if prediction.valid else (), prediction.fields):
        say(f"      {line[:80]}")
    explanation = prediction.explanation.replace("\n", " ")
    say(f"      {fmt.explanation_head}{explanation[:80]}{'…' if len(explanation) > 80 else ''}")


def _analyse_and_evaluate(gguf: Path, splits: dict, output_dir: Path, options: dict, say, timing: Timing) -> dict:
    """Phases 4 and 5 on one llama.cpp model shared by the four tasks (loading is most of a tiny model's cost)."""
    from mentalglm.analysis.analyzer import Analyzer
    from mentalglm.core.plugin_manager import get_plugin_manager
    from mentalglm.data.readers import read_posts
    from mentalglm.evaluation.evaluate import evaluate

    documents = {}
    with contextlib.ExitStack() as stack:
        with timing.phase("analyse"):
            say("[4/5] analysing held-out posts with llama.cpp (answers constrained to each task's format):")
            backend = stack.enter_context(get_plugin_manager().backend_class("llamacpp")(str(gguf), options))
            analysers = {task: Analyzer(task=task, backend=backend) for task in TASKS}
            for task, analyzer in analysers.items():
                posts = read_posts(splits[task][1], analyzer.task)
                _show(task, posts[0], next(analyzer.analyze_many(posts[:1])), analyzer.response_format, say)
        with timing.phase("evaluate"):
            say("[5/5] evaluating every task on its held-out synthetic posts …")
            for task, analyzer in analysers.items():
                run_dir = output_dir / task
                shutil.rmtree(run_dir, ignore_errors=True)  # a demo run is redone whole, never resumed
                posts = read_posts(splits[task][1], analyzer.task)[:EVAL_POSTS]
                documents[task] = evaluate(analyzer, posts, run_dir, data=str(splits[task][1]), progress=False)
    return documents


def _metric_table(documents: dict, output_dir: Path, say) -> None:
    rows = [(task, d["counts"]["posts"], d["counts"]["invalid"], d["primary_metric"], f"{d['primary_value']:.3f}")
            for task, d in documents.items()]
    width = max(len(r[0]) for r in rows)
    say(f"  {'task':<{width}}  posts  invalid  primary metric")
    for task, n, invalid, metric, value in rows:
        say(f"  {task:<{width}}  {n:>5}  {invalid:>7}  {metric} = {value}")
    say(f"  (per-post predictions, metrics.json and report.md under {output_dir}/)")


NEXT_STEPS = (
    "\nNext steps with the real MentalGLM weights (download them on a machine with internet):\n"
    "  mentalglm convert --model MentalGLM-chat -o MentalGLM-chat-hf          # for the torch backend\n"
    "  mentalglm export --model MentalGLM-chat --outtype q4_k_m -o mentalglm-chat-q4_k_m.gguf\n"
    "  mentalglm analyze --task suicide-risk --model mentalglm-chat-q4_k_m.gguf -O gpu_memory=6GiB \"……\"\n"
    "  mentalglm evaluate --task depression --model mentalglm-chat-q4_k_m.gguf --data your-test.jsonl "
    "--output-dir runs/dep\n"
    "  mentalglm train --model glm-4-9b-chat-hf --data your-c-imhi.jsonl --task depression -o runs/lora")


def run_quickstart(cache_dir: str | Path | None = None, output_dir: str | Path = "runs/quickstart",
                   say: Callable[[str], None] = print, steps: int | None = None,
                   threads: int | None = None) -> dict:
    """Run the demo end to end; returns ``{task: metrics document}``.

    Args:
        cache_dir: where the demo model, adapter and GGUF are cached.
        output_dir: where each task's evaluation run goes (predictions, metrics, report) and
            ``timing.json``.
        say: where progress and results are written (stdout by default).
        steps: training steps (default ``TRAINING["max_steps"]``).
        threads: CPU threads for torch and llama.cpp (default :func:`demo_threads`).
    """
    timing = Timing()
    with timing.phase("imports"):
        import torch

        from mentalglm.core.provenance import package_versions

    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / VERSION
    output_dir = Path(output_dir)
    threads = threads or demo_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        documents, steps_done = _pipeline(cache, output_dir, say, timing, steps, threads)
    finally:
        torch.set_num_threads(before)  # the caller's setting, when called from Python
    timing.stop()
    say(timing.summary())
    _write_timing(output_dir / "timing.json", timing, threads=threads, load=load, steps=steps_done,
                  versions=package_versions())
    say(NEXT_STEPS)
    return documents


def _pipeline(cache: Path, output_dir: Path, say, timing: Timing, steps: int | None, threads: int):
    """The five phases; returns ``({task: metrics document}, training steps)``."""
    say("mentalglm quickstart — a PIPELINE DEMO on synthetic posts, not a clinical model.")
    say(f"cache: {cache}")
    with timing.phase("data"):
        splits = split_samples(cache / "data")
    base, gguf = cache / "base", cache / "demo-q8_0.gguf"
    with timing.phase("build") as phase:
        _build_model(base, say, phase)
    with timing.phase("train") as phase:
        result = _train_adapter(cache, base, splits, say, phase, steps)
    with timing.phase("export") as phase:
        _export(base, result.adapter, gguf, say, phase)
    documents = _analyse_and_evaluate(gguf, splits, output_dir, {**LLAMA_OPTIONS, "n_threads": threads}, say, timing)
    _metric_table(documents, output_dir, say)
    say("These scores belong to a tiny demo model trained for seconds on synthetic posts: they show the pipeline "
        "works, not how well MentalGLM works.")
    return documents, result.steps


def process_seconds() -> float | None:
    """Seconds since this process started (Python start-up and imports included), where Linux tells."""
    try:
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return round(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, ValueError, IndexError):
        return None


def _write_timing(path: Path, timing: Timing, *, threads: int, load: float | None, steps: int, versions: dict) -> None:
    from mentalglm.core.files import write_json
    from mentalglm.core.threads import usable_cpus

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, timing.to_dict(version=VERSION, training_steps=steps, eval_posts_per_task=EVAL_POSTS,
                                    threads={"torch": threads, "llama_cpp": threads}, cpus=len(usable_cpus()),
                                    load_average_at_start=load, versions=versions))
