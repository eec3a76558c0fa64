"""Explanations against gold explanations, and grounding, with 95 % intervals over posts.

C-IMHI outputs carry a gold explanation after ``解释：``; when the evaluated data has them, the
model's explanations are scored against them the way the IMHI line of work reports it:

- **ROUGE-L**: character-level F1 per post (rouge-score with a character tokenizer, as for
  pathway summaries), averaged;
- **BLEU**: corpus BLEU from sacreBLEU with its ``zh`` tokenizer (every CJK character a token),
  on the 0–1 scale.

Both get a seeded percentile bootstrap over posts — the same resamples as every other metric
(:func:`~mentalglm.evaluation.statistics.resample_blocks`). Corpus BLEU is not a mean over posts, so
each resample sums the posts' n-gram statistics and sacreBLEU computes BLEU from those sums;
on the full data that equals ``sacrebleu.corpus_bleu``. The share of quoted spans grounded in
the post (:mod:`~mentalglm.analysis.grounding`) is a ratio over posts and is bootstrapped the same way.

- **BERTScore** F1 (optional): only when the user names a local encoder folder
  (:class:`~mentalglm.evaluation.bertscore.BERTScorer`); nothing is downloaded. Per-post F1, averaged,
  bootstrapped like ROUGE-L.
"""

from __future__ import annotations

from typing import Sequence

from mentalglm.evaluation import statistics


def _rouge_l(predicted: Sequence[str], reference: Sequence[str]) -> list[float]:
    from rouge_score import rouge_scorer

    from mentalglm.core.metrics import _Characters

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Characters())
    scores = []
    for pred, ref in zip(predicted, reference):
        if not pred.strip() and not ref.strip():
            scores.append(1.0)
        else:
            scores.append(scorer.score(ref, pred)["rougeL"].fmeasure)
    return scores


def _bleu_statistics(predicted: Sequence[str], reference: Sequence[str]):
    """Per-post n-gram matches and totals (4 + 4 columns), hypothesis and reference lengths."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize="zh", effective_order=True)
    rows = []
    for pred, ref in zip(predicted, reference):
        score = bleu.sentence_score(pred, [ref])
        rows.append([*score.counts, *score.totals, score.sys_len, score.ref_len])
    return np.array(rows, dtype=float).reshape(-1, 10)


def _bleu_from(stats) -> float:
    from sacrebleu.metrics import BLEU

    counts = [int(round(v)) for v in stats]
    # sacreBLEU's corpus defaults (exponential smoothing), from summed statistics.
    return BLEU.compute_bleu(counts[:4], counts[4:8], counts[8], counts[9], smooth_method="exp").score / 100


def explanation_metrics(predicted: Sequence[str], reference: Sequence[str], *,
                        resamples: int = statistics.DEFAULT_RESAMPLES, seed: int = statistics.DEFAULT_SEED,
                        confidence: float = statistics.CONFIDENCE, bertscore=None) -> dict:
    """ROUGE-L and BLEU (and BERTScore F1 with a ``bertscore`` scorer) of ``predicted`` explanations
    against ``reference`` ones, with intervals.

    Returns:
        ``{"n", "rouge_l", "bleu"[, "bertscore_f1", "bertscore_model"], "intervals": {name: {"low", "high", …}}}``.
    """
    import numpy as np

    n = len(reference)
    if n == 0:
        return {"n": 0, "rouge_l": None, "bleu": None, "intervals": {}}
    means = {"rouge_l": np.array(_rouge_l(predicted, reference))}
    stats = _bleu_statistics(predicted, reference)
    document = {"n": n, "rouge_l": float(means["rouge_l"].mean()), "bleu": _bleu_from(stats.sum(axis=0)),
                "intervals": {}}
    if bertscore is not None:
        means["bertscore_f1"] = np.array([f1 for _, _, f1 in bertscore.score(predicted, reference)])
        document.update(bertscore_f1=float(means["bertscore_f1"].mean()),
                        bertscore_model={"model": bertscore.name, "layer": bertscore.layer})
    if resamples:
        replicates: dict[str, list] = {name: [] for name in (*means, "bleu")}
        for block in statistics.resample_blocks(n, resamples, seed):
            weights = statistics._weights(block)
            for name, values in means.items():
                replicates[name].extend(weights @ values / n)
            replicates["bleu"].extend(_bleu_from(row) for row in weights @ stats)
        document["intervals"] = _intervals(replicates, resamples, seed, confidence)
    return document


def grounding_metrics(rows: Sequence[dict], *, resamples: int = statistics.DEFAULT_RESAMPLES,
                      seed: int = statistics.DEFAULT_SEED, confidence: float = statistics.CONFIDENCE) -> dict:
    """:func:`~mentalglm.analysis.grounding.grounding_summary` of prediction rows, with a bootstrap
    interval over posts for the grounded share (spans of one answer are not independent)."""
    import numpy as np

    from mentalglm.analysis.grounding import grounding_summary

    summary = grounding_summary(rows)
    spans = np.array([len(r.get("evidence") or ()) for r in rows], dtype=float)
    grounded = np.array([sum(bool(e.get("grounded")) for e in r.get("evidence") or ()) for r in rows], dtype=float)
    summary["intervals"] = {}
    if resamples and spans.sum() > 0:
        values = []
        for block in statistics.resample_blocks(len(rows), resamples, seed):
            weights = statistics._weights(block)
            total = weights @ spans
            values.extend(np.where(total > 0, (weights @ grounded) / np.where(total > 0, total, 1), np.nan))
        summary["intervals"] = _intervals({"grounded": values}, resamples, seed, confidence)
    return summary


def _intervals(replicates: dict, resamples: int, seed: int, confidence: float) -> dict:
    intervals = {}
    for name, values in replicates.items():
        bounds = statistics.percentile_interval(values, confidence)
        if bounds is not None:
            intervals[name] = {"low": bounds[0], "high": bounds[1], "method": statistics.PERCENTILE_BOOTSTRAP,
                               "resamples": resamples, "seed": seed, "confidence": confidence}
    return intervals
