"""Krippendorff's α counted by hand from the coincidence matrix (Krippendorff 2011, "Computing
Krippendorff's Alpha-Reliability", sections C and E): the outside reference the tests hold
:func:`mentalglm.review.agreement.krippendorff_alpha` (which calls the ``krippendorff`` package) to.
Plain Python, no numpy, nothing shared with the code under test.
"""

from __future__ import annotations

from collections import defaultdict


def alpha_by_hand(units: dict, level: str, domain: list | None = None) -> float:
    """α of ``units`` (unit → rater → value) at ``level`` ``"nominal"``, ``"ordinal"`` or ``"interval"``.

    ``domain``: the ordinal scale in order (values that never occur still count as points between).
    """
    pairable = [list(values.values()) for values in units.values() if len(values) >= 2]
    coincidences: dict = defaultdict(float)  # o_ck: each ordered pair of values in a unit, weighted 1 / (m_u - 1)
    for values in pairable:
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[c, k] += 1 / (len(values) - 1)
    totals: dict = defaultdict(float)  # n_c
    for (c, _), count in coincidences.items():
        totals[c] += count
    n = sum(totals.values())
    scale = list(domain) if domain is not None else sorted(totals)

    def distance(c, k) -> float:
        if level == "nominal":
            return 0.0 if c == k else 1.0
        if level == "interval":
            return float(c - k) ** 2
        low, high = sorted((scale.index(c), scale.index(k)))
        between = sum(totals.get(g, 0.0) for g in scale[low:high + 1])
        return (between - (totals.get(scale[low], 0.0) + totals.get(scale[high], 0.0)) / 2) ** 2

    observed = sum(count * distance(c, k) for (c, k), count in coincidences.items())
    expected = sum(totals[c] * totals[k] * distance(c, k) for c in totals for k in totals)
    return 1 - (n - 1) * observed / expected
