"""``mentalglm bench``: backends side by side on the same model and posts.

Each backend variant (``torch``, ``llamacpp:q8_0``, ``llamacpp:q4_k_m``, …) is loaded once, then
all of them analyse the same posts in alternating rounds (the order rotates every round), so
drift on a noisy machine hits every backend alike and the ratios hold. Reported per variant:
posts/s, generated tokens/s, p50/p95 latency (from handing a batch of ``batch_size`` posts to the
backend to having its results, counted for each post of the batch), memory the load added,
valid-output rate and the task's primary metric (when the posts carry gold labels); plus the
machine and versions. One untimed warm-up post per variant comes first.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.prediction import Post

DEFAULT_OUTTYPE = "q8_0"


@dataclass
class Variant:
    """One backend configuration to measure."""

    label: str
    backend: str
    model: str
    options: dict = field(default_factory=dict)


@dataclass
class VariantResult:
    """Figures for one variant, over all rounds."""

    label: str
    posts: int
    seconds: list[float]
    latencies: list[float]
    completion_tokens: int
    load_seconds: float
    memory_bytes: int
    valid_rate: float
    primary_metric: str | None = None
    primary_value: float | None = None
    primary_interval: dict | None = None
    #: the primary metric minus the first variant's, on the same posts, with a paired bootstrap
    #: interval (``{"delta", "low", "high"}``); None for the first variant or without gold labels.
    primary_delta: dict | None = None

    @property
    def posts_per_second(self) -> float:
        """Posts per second (median round)."""
        return self.posts / statistics.median(self.seconds)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second over all rounds."""
        return self.completion_tokens / sum(self.seconds) if sum(self.seconds) else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in seconds (q in 0–100)."""
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]

    def summary(self) -> dict:
        """JSON-ready figures."""
        return {"label": self.label, "posts": self.posts, "posts_per_second": self.posts_per_second,
                "tokens_per_second": self.tokens_per_second, "p50_latency_s": self.percentile(50),
                "p95_latency_s": self.percentile(95), "round_seconds": self.seconds,
                "load_seconds": self.load_seconds, "memory_bytes": self.memory_bytes,
                "valid_rate": self.valid_rate, "primary_metric": self.primary_metric,
                "primary_value": self.primary_value, "primary_interval": self.primary_interval,
                "primary_delta": self.primary_delta}


def parse_variants(spec: str, model: str, workdir: Path, options: dict[str, dict]) -> list[Variant]:
    """``torch,llamacpp:q4_k_m`` → variants; llama.cpp variants export ``model`` to GGUF (cached in ``workdir``).

    A ``.gguf`` model can only feed llama.cpp variants; a model directory feeds both. A variant
    may carry options of its own after ``@`` (``llamacpp:q8_0@parallel=1``, several joined by
    ``@``), on top of the ``-O`` options of its backend, so one run can compare settings side by side.
    """
    from mentalglm.converters.gguf_export import OUTTYPES, export_gguf

    variants = []
    for written in (part.strip() for part in spec.split(",") if part.strip()):
        item, *overrides = written.split("@")
        name, _, detail = item.partition(":")
        backend_options = dict(options.get(name, {}))
        for override in overrides:
            key, equals, value = override.partition("=")
            if not equals or not key.strip():
                raise MentalGLMError(f"bench: '{override}' in '{written}' is not KEY=VALUE")
            backend_options[key.strip()] = value.strip()
        if name == "llamacpp":
            if model.endswith(".gguf"):
                path = model
            else:
                outtype = (detail or DEFAULT_OUTTYPE).lower()
                if outtype not in OUTTYPES:
                    raise MentalGLMError(f"bench: unknown out type '{outtype}' in '{item}'; "
                                         f"choose one of {', '.join(OUTTYPES)}")
                path = str(workdir / f"{Path(model).name}-{outtype}.gguf")
                if not Path(path).exists():
                    export_gguf(model, path, outtype=outtype)
            label = f"llamacpp:{detail or Path(path).stem.rsplit('-', 1)[-1]}"
            variants.append(Variant("@".join([label, *overrides]), name, path, backend_options))
        else:
            if model.endswith(".gguf"):
                raise MentalGLMError(f"bench: backend '{name}' needs a model directory, not a GGUF file")
            variants.append(Variant(written, name, model, backend_options))
    if not variants:
        raise MentalGLMError("bench: no backends given (e.g. --backends torch,llamacpp:q8_0)")
    return variants


def _rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def machine_info() -> dict:
    """CPU, core count, GPU (if torch sees one) and package versions, for the report."""
    from mentalglm.core.provenance import package_versions

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform(),
            "versions": package_versions()}


def run_bench(variants: Sequence[Variant], task_name: str, posts: Sequence[Post], *, rounds: int = 3,
              mode: str = "generate", batch_size: int | None = None, progress=None) -> list[VariantResult]:
    """Load every variant, then analyse ``posts`` with each in rotating order for ``rounds`` rounds.

    ``batch_size`` posts go to a variant at a time; by default what its backend prefers.
    """
    from mentalglm.analysis.analyzer import Analyzer

    analyzers, loads = [], []
    try:
        for variant in variants:
            before, start = _rss(), time.perf_counter()
            analyzers.append(Analyzer(task=task_name, backend=variant.backend, model=variant.model,
                                      options=variant.options, mode=mode, batch_size=batch_size))
            loads.append((time.perf_counter() - start, max(0, _rss() - before)))
            list(analyzers[-1].analyze_many(posts[:1]))  # warm-up (grammar compile, first allocations), untimed
        records = [{"seconds": [], "latencies": [], "tokens": 0, "predictions": []} for _ in variants]
        for round_index in range(rounds):
            shift = round_index % len(variants)
            for index in list(range(len(variants)))[shift:] + list(range(len(variants)))[:shift]:
                record = records[index]
                start = time.perf_counter()
                predictions = []
                size = analyzers[index].batch_size
                for batch_start in range(0, len(posts), size):
                    batch = posts[batch_start:batch_start + size]
                    t0 = time.perf_counter()
                    done = list(analyzers[index].analyze_many(batch))
                    record["latencies"].extend([time.perf_counter() - t0] * len(done))
                    predictions.extend(done)
                record["seconds"].append(time.perf_counter() - start)
                record["tokens"] += sum(p.usage.get("completion_tokens", 0) for p in predictions)
                record["predictions"] = predictions
                if progress:
                    progress(variants[index].label, round_index + 1)
    finally:
        for analyzer in analyzers:
            analyzer.close()
    results = []
    task = analyzers[0].task if analyzers else None
    scored = task is not None and posts and all(p.gold is not None for p in posts)
    baseline = None
    for variant, (load_s, memory), record in zip(variants, loads, records):
        predictions = record["predictions"]
        valid = sum(p.valid for p in predictions) / len(predictions) if predictions else 0.0
        value = interval = delta = None
        if scored:
            from mentalglm.evaluation.statistics import metric_intervals

            responses = [task.parse(p.output) for p in predictions]
            golds = [p.gold for p in posts]
            metrics = task.compute_metrics(golds, responses)
            value = metrics.get(task.primary_metric)
            # The same seeded bootstrap as `evaluate`: a bench's accuracy column carries its 95 % interval.
            interval = metric_intervals(task, golds, responses, metrics)[0].get(task.primary_metric)
            if baseline is None:
                baseline = (responses, metrics)
            elif value is not None:
                delta = paired_delta(task, golds, baseline[0], responses, references=(baseline[1], metrics))
        results.append(VariantResult(variant.label, len(posts), record["seconds"], record["latencies"],
                                     record["tokens"], load_s, memory, valid,
                                     task.primary_metric if value is not None else None, value, interval, delta))
    return results


def paired_delta(task, golds, first, other, references=None) -> dict | None:
    """``other``'s primary metric minus ``first``'s on the same posts, with the paired percentile
    bootstrap interval `mentalglm compare` gives (both scored on the same resamples).

    ``references``: both runs' full-data metrics when the caller has them already.
    """
    from mentalglm.evaluation import statistics as stats

    name = task.primary_metric
    a, b = references or (task.compute_metrics(golds, first), task.compute_metrics(golds, other))
    if not isinstance(a.get(name), (int, float)) or not isinstance(b.get(name), (int, float)):
        return None
    replicates_a, replicates_b = stats.bootstrap_replicates(task, golds, [first, other], [name], references=[a, b])
    bounds = stats.percentile_interval(replicates_b[name] - replicates_a[name])
    low, high = bounds if bounds is not None else (None, None)
    return {"delta": b[name] - a[name], "low": low, "high": high}


def write_report(results: Sequence[VariantResult], out_dir: Path, meta: dict) -> dict:
    """Write ``bench.json`` and ``bench.png`` (posts/s and tokens/s per variant); returns the document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = results[0].posts_per_second if results else 1.0
    document = {**meta, "machine": machine_info(),
                "results": [{**r.summary(), "speed_vs_first": r.posts_per_second / baseline} for r in results]}
    (out_dir / "bench.json").write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        document["chart"] = None
        return document
    labels = [r.label for r in results]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].bar(labels, [r.posts_per_second for r in results], color="#4c72b0")
    axes[0].set_title("posts / s (median round)")
    axes[1].bar(labels, [r.tokens_per_second for r in results], color="#dd8452")
    axes[1].set_title("generated tokens / s")
    for axis in axes:
        axis.tick_params(axis="x", rotation=20)
    figure.suptitle(f"mentalglm bench: {meta.get('task')} on {Path(str(meta.get('model'))).name}")
    figure.tight_layout()
    figure.savefig(out_dir / "bench.png", dpi=110)
    plt.close(figure)
    document["chart"] = str(out_dir / "bench.png")
    return document
