"""Grounding: whether the spans an answer quotes occur in the post the model was shown.

Explanations often quote the post (``帖子中提到“整夜睡不着”``), and tasks with an evidence part
ask for quotes outright (``依据：“整夜睡不着”“不想活了”``). A quote the post does not contain
is a claim about the post that the post does not support, so every quoted span is looked up
in the post — the redacted, possibly truncated text the backend saw — and reported with its
offsets, or flagged as ungrounded. Nothing is dropped: an ungrounded quote stays in the
answer and in ``evidence`` with ``grounded: false``.

Matching is exact on characters after NFKC normalisation of both sides (full-width and
half-width forms fold together; case is kept). Each character is normalised on its own so an
offset in the normalised post maps back to one character of the original: ``start``/``end``
index the post as given (``post[start:end]`` is the quoted passage). A span is a quote of at
least :data:`MIN_QUOTE` characters between Chinese or ASCII double quotes or corner brackets.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Sequence

#: Shorter quotes (a single character, an empty pair) are not claims about the post.
MIN_QUOTE = 2
#: Opening → closing quote marks read as quoting (after NFKC, full-width ＂ is ").
QUOTE_PAIRS = {"“": "”", "「": "」", "『": "』", '"': '"'}
_QUOTED = re.compile("|".join(f"{re.escape(o)}([^{re.escape(c)}\\n]*){re.escape(c)}" for o, c in QUOTE_PAIRS.items()))


@dataclass(frozen=True)
class Evidence:
    """One quoted span and where the post has it.

    Attributes:
        quote: the span as the answer wrote it (without the quote marks).
        start, end: its characters in the post (``post[start:end]``), or None when not found.
        grounded: the post contains the span (NFKC, exact).
    """

    quote: str
    start: int | None
    end: int | None
    grounded: bool

    def to_dict(self) -> dict:
        """JSON-ready: what predictions.jsonl holds under ``evidence``."""
        return asdict(self)


def quoted_spans(text: str) -> list[str]:
    """The spans ``text`` quotes, in order (quotes shorter than :data:`MIN_QUOTE` characters left out)."""
    spans = []
    for match in _QUOTED.finditer(text or ""):
        span = next(g for g in match.groups() if g is not None).strip()
        if len(span) >= MIN_QUOTE:
            spans.append(span)
    return spans


def _folded(text: str) -> tuple[str, list[int]]:
    """NFKC per character, with the original index of every folded character."""
    chars, origin = [], []
    for index, char in enumerate(text):
        folded = unicodedata.normalize("NFKC", char)
        chars.append(folded)
        origin.extend([index] * len(folded))
    return "".join(chars), origin


def ground(spans: Sequence[str], post: str) -> list[Evidence]:
    """Find each span in ``post``: the first occurrence, with offsets into ``post`` itself."""
    folded_post, origin = _folded(post)
    found = []
    for span in spans:
        needle = _folded(span)[0]
        at = folded_post.find(needle) if needle else -1
        if at < 0:
            found.append(Evidence(span, None, None, False))
        else:
            found.append(Evidence(span, origin[at], origin[at + len(needle) - 1] + 1, True))
    return found


def grounding_of(output: str, post: str) -> tuple[list[dict] | None, float | None]:
    """``(evidence, grounding)`` for a model answer: every quoted span looked up in ``post``, and the
    share found; ``(None, None)`` when the answer quotes nothing."""
    spans = quoted_spans(output)
    if not spans:
        return None, None
    evidence = ground(spans, post)
    return [e.to_dict() for e in evidence], sum(e.grounded for e in evidence) / len(evidence)


def grounding_summary(rows: Sequence[dict]) -> dict:
    """What a run's predictions say about grounding: answers that quote, spans, spans grounded and
    the share (the report's "% grounded"), and answers whose every quote is grounded."""
    quoting = [r for r in rows if r.get("evidence")]
    spans = sum(len(r["evidence"]) for r in quoting)
    grounded = sum(bool(e.get("grounded")) for r in quoting for e in r["evidence"])
    return {"answers": len(rows), "quoting": len(quoting), "spans": spans, "grounded_spans": grounded,
            "grounded": grounded / spans if spans else None,
            "fully_grounded_answers": sum(all(e.get("grounded") for e in r["evidence"]) for r in quoting)}
