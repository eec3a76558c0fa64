"""Replicas of one server for the ``openai`` backend: least-busy choice, fail-over, cool-down, counts.

``base_url`` may name several servers that serve the same model. Each request goes to the
replica with the fewest requests in flight (ties: the one sent fewer so far, then the order
given). A try that fails in a way worth retrying — no connection, a reset, a 5xx or 429, a
timeout — takes that replica out of service for ``cooldown`` seconds (longer if the server's
``Retry-After`` says so) and the request is retried at once on another replica; only when no
other replica is in service does it wait the backoff and try the one back soonest. When a
replica's cool-down ends, one request probes it: an answer puts it back in service, a failure
takes it out again. A 4xx that is the request's own fault (400, 404, 422…) is not retried: any
replica would refuse it the same way.

One replica behaves exactly as a plain ``base_url`` always did: retries with backoff on it.
Time comes from an injectable ``clock``, so the choice and the cool-down are tested without
sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mentalglm.backends.openai_http import Cancelled, JsonClient, Retryable
from mentalglm.core.errors import MentalGLMError

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One server and what happened to it.

    Attributes:
        url: its API root (``http://host:8000/v1``).
        in_flight: requests sent to it and not yet answered.
        requests: tries sent to it.
        failures: tries that failed in a way worth retrying.
        taken_out: how often it was taken out of service.
        out_until: clock time its cool-down ends, or None while it is in service.
        probing: whether the request that tests it after its cool-down is in flight.
    """

    url: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    taken_out: int = 0
    out_until: float | None = None
    probing: bool = False

    def counts(self) -> dict:
        """``requests``, ``failures``, ``taken_out`` (and ``in_service`` now), JSON-ready."""
        return {"requests": self.requests, "failures": self.failures, "taken_out": self.taken_out,
                "in_service": self.out_until is None}


class ReplicaPool:
    """Spreads requests over replicas and keeps failed ones out for a while (thread-safe).

    Args:
        urls: the replicas' API roots (at least one).
        cooldown: seconds a failed replica stays out before a request probes it again.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, urls: Sequence[str], *, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if not urls:
            raise ValueError("a replica pool needs at least one URL")
        self.replicas = [Replica(url) for url in urls]
        self.cooldown, self.clock = cooldown, clock
        self._lock = threading.Lock()

    @property
    def urls(self) -> list[str]:
        """The replicas' API roots, in the order given."""
        return [r.url for r in self.replicas]

    def _usable(self, replica: Replica, now: float) -> bool:
        return replica.out_until is None or (now >= replica.out_until and not replica.probing)

    def acquire(self, avoid: Sequence[str] = ()) -> Replica:
        """The replica the next try goes to (counted as in flight until :meth:`release`).

        The least busy replica in service, preferring those not in ``avoid`` (the ones this
        request already failed on); when none is in service, the one whose cool-down ends first.
        """
        with self._lock:
            now = self.clock()
            order = {id(r): i for i, r in enumerate(self.replicas)}
            usable = [r for r in self.replicas if self._usable(r, now)]
            preferred = [r for r in usable if r.url not in avoid] or usable
            if preferred:
                replica = min(preferred, key=lambda r: (r.in_flight, r.requests, order[id(r)]))
            else:  # all out: no better choice than the one back soonest
                replica = min(self.replicas, key=lambda r: (r.out_until, r.in_flight, order[id(r)]))
            if replica.out_until is not None:
                replica.probing = True
            replica.in_flight += 1
            replica.requests += 1
            return replica

    def release(self, replica: Replica, *, healthy: bool, retry_after: float | None = None) -> None:
        """The try sent to ``replica`` ended: it answered (``healthy``, whatever the status) or it failed.

        A failure takes a replica in service (or one being probed) out for ``cooldown`` seconds,
        or for ``retry_after`` when that is longer.
        """
        with self._lock:
            replica.in_flight -= 1
            if healthy:
                if replica.out_until is not None:
                    log.info("openai backend: replica %s answers again; back in service", replica.url)
                replica.out_until, replica.probing = None, False
                return
            replica.failures += 1
            if replica.out_until is None or replica.probing:
                replica.taken_out += 1
                replica.out_until = self.clock() + max(self.cooldown, retry_after or 0.0)
                replica.probing = False
                if len(self.replicas) > 1:
                    log.warning("openai backend: replica %s taken out for %g s", replica.url,
                                replica.out_until - self.clock())

    def in_service(self, avoid: Sequence[str] = ()) -> bool:
        """Whether a replica outside ``avoid`` could take a try right now."""
        with self._lock:
            now = self.clock()
            return any(self._usable(r, now) and r.url not in avoid for r in self.replicas)

    def counts(self) -> dict[str, dict]:
        """Per replica (by URL): requests, failures, times taken out, whether it is in service now."""
        with self._lock:
            return {r.url: r.counts() for r in self.replicas}

    def send(self, http: JsonClient, path: str, payload: Any, *, tries: int, prompt: str = "",
             cancel: threading.Event | None = None) -> tuple[str, Any]:
        """``POST {replica}{path}`` with fail-over: ``(the replica that answered, its JSON answer)``.

        Args:
            http: the client (one try per call; this method does the retrying).
            path: the endpoint under the API root (``/completions``).
            tries: tries in all, over all replicas.
            prompt: text no error message may quote.
            cancel: set when another request of the batch failed for good: stop before the next try.

        Raises:
            MentalGLMError: still failing after ``tries`` tries (the last replica and its problem).
            HTTPStatusError, NotJSON: the request's own fault, from the replica that answered.
            Cancelled: ``cancel`` was set.
        """
        tried: list[str] = []
        for attempt in range(tries):
            if cancel is not None and cancel.is_set():
                raise Cancelled("openai backend: cancelled")
            replica = self.acquire(avoid=tried)
            try:
                answer = http.try_once(replica.url + path, payload, prompt=prompt)
            except Retryable as problem:
                self.release(replica, healthy=False, retry_after=problem.retry_after)
                tried.append(replica.url)
                where = f"{replica.url}{path}"
                if attempt + 1 == tries:
                    spread = f" on {len(set(tried))} replicas" if len(set(tried)) > 1 else ""
                    raise MentalGLMError(f"openai backend: {where}: {problem.message} "
                                         f"(gave up after {tries} tries{spread})") from None
                if self.in_service(avoid=tried):
                    log.warning("openai backend: %s: %s; retry %d of %d on another replica", where, problem.message,
                                attempt + 1, tries - 1)
                    continue
                delay = http.delay(attempt, problem.retry_after)
                log.warning("openai backend: %s: %s; retry %d of %d in %.1f s", where, problem.message,
                            attempt + 1, tries - 1, delay)
                if cancel is None:
                    time.sleep(delay)
                elif cancel.wait(delay):
                    raise Cancelled("openai backend: cancelled") from None
            except BaseException:
                self.release(replica, healthy=True)  # it answered: the request, not the replica, is at fault
                raise
            else:
                self.release(replica, healthy=True)
                return replica.url, answer
        raise AssertionError("unreachable")


def describe_counts(counts: dict[str, dict]) -> str:
    """One line for people: ``http://a/v1: 12 requests, 1 failed, taken out 1×; http://b/v1: …``."""
    return "; ".join(f"{url}: {c['requests']} requests, {c['failures']} failed, taken out {c['taken_out']}×"
                     + ("" if c.get("in_service", True) else " (out now)") for url, c in counts.items())
