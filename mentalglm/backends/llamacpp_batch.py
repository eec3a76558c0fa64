"""Parallel sequences for the llamacpp backend: many posts decoded together, one llama.cpp call per step.

How a batch of requests runs on :class:`~mentalglm.backends.llamacpp_native.BatchContext`'s
``N`` slots (one llama.cpp sequence, one KV stream each):

- **Prefix sharing.** A slot remembers the tokens its stream holds. A new prompt keeps the
  longest common prefix with its slot, or copies the stream of the slot that shares most with
  it (the task instruction, evaluated once for all slots) and evaluates only its own rest.
- **Prompts alone, steps together.** A post's own tokens are evaluated in a call of their own
  (several prompts in one call were slower on CPU, and llama.cpp splits a batch over separate
  streams into equal-length pieces); every decode step feeds the last token of every running
  post in one call.
- **Continuous refill.** When a post ends (end-of-generation token, stop string, token budget,
  full window) its slot takes the next waiting post while the others go on.
- **Same answers.** Each post has its own sampler chain (grammar state, seed) built like the
  one-post-at-a-time path's, sees the same tokens at the same positions, and ends by the same
  rules (:class:`Continuation`), so its tokens are those of that path — to float rounding: on
  f32 weights the logits agree to ~1e-6; llama.cpp's quantized matmuls round differently for
  many tokens per call than for one, which can flip a near-tie.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

#: A copy moves a whole KV stream; below this many shared tokens evaluating them is as cheap.
MIN_COPY_GAIN = 8


class Continuation:
    """Decides, token by token, when one sequence's generation ends.

    Args:
        budget: the most tokens to generate.
        stops: strings that end the answer once its text contains one.
        is_end: the model's end-of-generation test (not kept in the answer).
        detokenize: token ids → text, to look for stop strings.
    """

    def __init__(self, budget: int, stops: Sequence[str], is_end: Callable[[int], bool],
                 detokenize: Callable[[list[int]], str]):
        self.budget, self.stops = budget, [s for s in stops if s]
        self.is_end, self.detokenize = is_end, detokenize
        self.generated: list[int] = []

    def accept(self, token: int) -> str | None:
        """Take a sampled token; the finish reason (``stop``, ``length``) when generation ends with it."""
        if self.is_end(token):
            return "stop"
        self.generated.append(token)
        if self.stops and any(stop in self.detokenize(self.generated) for stop in self.stops):
            return "stop"
        return "length" if len(self.generated) >= self.budget else None


@dataclass
class Job:
    """One prompt to complete: its tokens, the end rules, and a factory of its sampler chain."""

    tokens: list[int]
    continuation: Continuation
    new_sampler: Callable[[], object]


@dataclass
class Outcome:
    """What a job produced: the generated tokens (end token excluded) and why it ended."""

    generated: list[int]
    finish: str


@dataclass
class _Running:
    job_index: int
    slot: int
    continuation: Continuation
    sampler: object
    position: int = 0          # where the next token goes
    next_token: int = -1       # sampled, not yet evaluated
    finish: str | None = None


@dataclass
class _Slots:
    """Which tokens each KV stream holds (positions 0…len-1), for prefix reuse and copies."""

    held: list[list[int]]
    free: set[int] = field(default_factory=set)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists.

    A binary search on slice equality: every slot is compared with every new prompt, and list
    comparison runs in C where a token-by-token loop would not.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


class ParallelDecoder:
    """Runs generation jobs and label scoring on a :class:`~mentalglm.backends.llamacpp_native.BatchContext`.

    Args:
        context: the multi-sequence llama.cpp context.
        prefix_cache: reuse evaluated prefixes (off: every prompt is evaluated from its first token).

    Raises (from :meth:`generate`, :meth:`score`):
        PromptTooLong: a prompt does not fit one slot's window.
    """

    def __init__(self, context, *, prefix_cache: bool = True):
        self.context = context
        self.prefix_cache = prefix_cache
        self.slots = _Slots(held=[[] for _ in range(context.n_seq)], free=set(range(context.n_seq)))
        self.steps = 0  # decode steps run (for tests and benchmarks)

    # -- prompts -----------------------------------------------------------------------------
    def _take_slot(self, tokens: list[int]) -> int:
        """The free slot whose stream shares most with ``tokens`` (ties: the lowest number)."""
        slot = max(sorted(self.slots.free), key=lambda s: common_prefix(self.slots.held[s], tokens))
        self.slots.free.discard(slot)
        return slot

    def _prefill(self, slot: int, tokens: list[int]) -> int:
        """Bring ``slot`` to exactly ``tokens``; the batch index of the last token's logits row."""
        if not tokens:
            raise ValueError("an empty prompt has no last token to continue from")
        if len(tokens) >= self.context.n_ctx_seq:
            raise PromptTooLong(len(tokens), self.context.n_ctx_seq)
        held = self.slots.held
        keep = common_prefix(held[slot], tokens) if self.prefix_cache else 0
        if self.prefix_cache:
            source = max(range(len(held)), key=lambda s: common_prefix(held[s], tokens))
            shared = common_prefix(held[source], tokens)
            if source != slot and shared - keep >= MIN_COPY_GAIN:
                self.context.copy(source, slot)
                held[slot], keep = list(held[source]), shared
        keep = min(keep, len(tokens) - 1)  # the last prompt token is evaluated for its logits
        self.context.truncate(slot, keep)
        held[slot] = tokens[:keep]
        index = 0
        for start in range(keep, len(tokens), self.context.n_batch):
            chunk = tokens[start:start + self.context.n_batch]
            last = start + len(chunk) == len(tokens)
            self.context.decode(chunk, list(range(start, start + len(chunk))), [slot] * len(chunk),
                                [last and i == len(chunk) - 1 for i in range(len(chunk))])
            held[slot].extend(chunk)
            index = len(chunk) - 1
        return index

    # -- generation --------------------------------------------------------------------------
    def generate(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Complete every job, up to ``n_seq`` at a time; outcomes in the jobs' order."""
        waiting = deque(range(len(jobs)))
        running: list[_Running] = []
        outcomes: list[Outcome | None] = [None] * len(jobs)
        try:
            while waiting or running:
                while waiting and self.slots.free:
                    state = self._start(jobs, waiting.popleft())
                    if state.finish:
                        self._end(state, outcomes)
                    else:
                        running.append(state)
                if running:
                    self._step(running)
                    for state in [s for s in running if s.finish]:
                        running.remove(state)
                        self._end(state, outcomes)
        finally:
            for state in running:
                state.sampler.close()
                self.slots.free.add(state.slot)
        return outcomes  # type: ignore[return-value]

    def _start(self, jobs: Sequence[Job], job_index: int) -> _Running:
        job = jobs[job_index]
        slot = self._take_slot(job.tokens)
        state = _Running(job_index, slot, job.continuation, job.new_sampler(), position=len(job.tokens))
        if job.continuation.budget <= 0:
            state.finish = "length"
            return state
        try:
            index = self._prefill(slot, job.tokens)
        except BaseException:
            state.sampler.close()
            self.slots.free.add(slot)
            raise
        self._sampled(state, state.sampler.sample(self.context, index))
        return state

    def _step(self, running: list[_Running]) -> None:
        """One decode call: the last sampled token of every running sequence, then one new token each."""
        self.context.decode([s.next_token for s in running], [s.position for s in running],
                            [s.slot for s in running], [True] * len(running))
        self.steps += 1
        for index, state in enumerate(running):
            self.slots.held[state.slot].append(state.next_token)
            state.position += 1
            self._sampled(state, state.sampler.sample(self.context, index))

    def _sampled(self, state: _Running, token: int) -> None:
        state.finish = state.continuation.accept(token)
        if state.finish is None and state.position + 1 > self.context.n_ctx_seq:
            state.finish = "length"  # the window is full: the token cannot be evaluated
        state.next_token = token

    def _end(self, state: _Running, outcomes: list) -> None:
        state.sampler.close()
        self.slots.free.add(state.slot)
        outcomes[state.job_index] = Outcome(list(state.continuation.generated), state.finish or "length")

    # -- label scoring -----------------------------------------------------------------------
    def score(self, prompts: Sequence[list[int]], candidates: Sequence[list[int]]) -> list[list[float]]:
        """Summed log-probabilities of each candidate's tokens after each prompt.

        Up to ``n_seq`` prompts at a time, each in its own slot on top of the shared prefix; then
        one call per candidate longer than a token evaluates it after every prompt of the group
        at once (the first token's log-probability comes from the prompt's own logits row).
        """
        results: list[list[float]] = []
        for start in range(0, len(prompts), self.context.n_seq):
            results.extend(self._score_group(prompts[start:start + self.context.n_seq], candidates))
        return results

    def _score_group(self, prompts: Sequence[list[int]], candidates: Sequence[list[int]]) -> list[list[float]]:
        slots = []
        scores = []
        try:
            for tokens in prompts:
                slot = self._take_slot(tokens)
                slots.append(slot)
                first = log_softmax(self.context.logits(self._prefill(slot, tokens)))
                scores.append([float(first[ids[0]]) for ids in candidates])
            for j, ids in enumerate(candidates):
                if len(ids) > 1:
                    self._score_candidate(prompts, slots, ids, j, scores)
        finally:
            self.slots.free.update(slots)
        return scores

    def _score_candidate(self, prompts, slots, ids: list[int], j: int, scores: list[list[float]]) -> None:
        """Add candidate ``j``'s later tokens to ``scores``: ``ids[:-1]`` after every prompt, in as few calls as fit."""
        width = len(ids) - 1
        per_call = max(1, self.context.n_batch // width)
        for start in range(0, len(slots), per_call):
            group = range(start, min(start + per_call, len(slots)))
            tokens, positions, seqs = [], [], []
            for k in group:
                base = len(prompts[k])
                tokens += ids[:-1]
                positions += range(base, base + width)
                seqs += [slots[k]] * width
            self.context.decode(tokens, positions, seqs, [True] * len(tokens))
            for n, k in enumerate(group):
                for i in range(width):
                    scores[k][j] += float(log_softmax(self.context.logits(n * width + i))[ids[i + 1]])
                self.context.truncate(slots[k], len(prompts[k]))  # back to the prompt for the next candidate


class PromptTooLong(ValueError):
    """A prompt has at least as many tokens as one sequence's window."""

    def __init__(self, tokens: int, window: int):
        super().__init__(f"a prompt of {tokens} tokens does not fit the context of {window} tokens; raise n_ctx")
        self.tokens, self.window = tokens, window


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from one row of logits (float64)."""
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())
