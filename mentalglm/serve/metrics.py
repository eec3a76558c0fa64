"""The service's counters in Prometheus' text exposition format (``GET /metrics``).

Kept by hand rather than with a client library: a handful of counters, one gauge and two
histograms, updated from the event loop and the decoding thread under one lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict

#: Request latency buckets (seconds) and batch-size buckets (posts per backend call).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        braces = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{braces} {_number(self.sum)}", f"{name}_count{braces} {self.total}"]


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Requests by route and status, latency, posts, invalid answers, queue depth and batch sizes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._posts: dict[str, int] = defaultdict(int)
        self._invalid: dict[str, int] = defaultdict(int)
        self._batches = _Histogram(BATCH_BUCKETS)
        self.queue_depth = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        """One finished HTTP request."""
        with self._lock:
            self._requests[(route, status)] += 1
            self._latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def predictions(self, task: str, posts: int, invalid: int) -> None:
        """Posts analysed for ``task``, and how many answers could not be read."""
        with self._lock:
            self._posts[task] += posts
            self._invalid[task] += invalid

    def batch(self, size: int) -> None:
        """One backend call of ``size`` posts."""
        with self._lock:
            self._batches.observe(size)

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            lines = ["# HELP mentalglm_requests_total HTTP requests by route and status.",
                     "# TYPE mentalglm_requests_total counter"]
            lines += [f'mentalglm_requests_total{{route="{_escape(r)}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self._requests.items())]
            lines += ["# HELP mentalglm_request_seconds Request latency.", "# TYPE mentalglm_request_seconds histogram"]
            for route, histogram in sorted(self._latency.items()):
                lines += histogram.lines("mentalglm_request_seconds", f'route="{_escape(route)}"')
            lines += ["# HELP mentalglm_posts_total Posts analysed, by task.", "# TYPE mentalglm_posts_total counter"]
            lines += [f'mentalglm_posts_total{{task="{_escape(t)}"}} {n}' for t, n in sorted(self._posts.items())]
            lines += ["# HELP mentalglm_invalid_answers_total Answers that could not be read, by task.",
                      "# TYPE mentalglm_invalid_answers_total counter"]
            lines += [f'mentalglm_invalid_answers_total{{task="{_escape(t)}"}} {n}'
                      for t, n in sorted(self._invalid.items())]
            lines += ["# HELP mentalglm_queue_depth Posts waiting for the model.", "# TYPE mentalglm_queue_depth gauge",
                      f"mentalglm_queue_depth {self.queue_depth}",
                      "# HELP mentalglm_batch_size Posts per backend call.", "# TYPE mentalglm_batch_size histogram"]
            lines += self._batches.lines("mentalglm_batch_size")
        return "\n".join(lines) + "\n"
