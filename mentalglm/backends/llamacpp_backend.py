"""The ``llamacpp`` backend: GGUF models through llama-cpp-python, on CPU or with CUDA offload.

- Offload: ``n_gpu_layers`` (a count, or -1 for all) or ``gpu_memory`` (``6GiB``), from which
  the layer count is computed with the file's own tensor sizes and the KV cache at ``n_ctx``.
- Grammar-constrained output: the task's answer format as GBNF, so labels are always valid;
  the explanation is free text bounded by ``max_new_tokens``.
- Prompt-prefix reuse: consecutive prompts share the task instruction, and llama.cpp's KV cache
  keeps it: only the new part of each prompt is evaluated (``prefix_cache=false`` turns it off).
- Parallel sequences (``parallel=N``): the posts of one :meth:`~LlamaCppBackend.generate` call
  are decoded N at a time, one llama.cpp call per step for all of them, with continuous refill
  and the instruction prefix evaluated once (:mod:`~mentalglm.backends.llamacpp_batch`);
  ``parallel=1`` is the one-post-at-a-time path. Answers are the same either way.
- llama.cpp's C logs go to Python logging (``mentalglm -vv`` shows them), native memory is
  freed by :meth:`close`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from mentalglm.backends.llamacpp_batch import Continuation, Job, ParallelDecoder, PromptTooLong, log_softmax
from mentalglm.backends.llamacpp_native import (
    ContinuationTokens,
    TokenPieces,
    bos_eos_texts,
    end_of_generation,
    last_logits,
    model_start_tokens,
    open_llama,
)
from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.core.threads import default_threads

log = logging.getLogger(__name__)

_CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
_KV_BYTES = {"f32": 4, "f16": 2, "q8_0": 34 / 32}  # q8_0: blocks of 32 values in 34 bytes
#: Default parallel sequences: on CPU a decode step of 8 costs little more than one of 1 (the
#: weights are read once); with offload, the GPU has room for more; with a gpu_memory budget, the
#: largest of these whose KV cache still lets every layer fit.
CPU_PARALLEL, GPU_PARALLEL, BUDGET_PARALLEL = 8, 16, (64, 32, 16, 8)
#: The one-post context kept beside the parallel one: only its tokenizer and vocabulary are used.
_AUX_CTX, _AUX_BATCH = 256, 64
_RECENT_PROMPTS = 512
#: Compiled grammars kept (least recently used dropped): tasks with evidence compile one per post.
_GRAMMARS_KEPT = 64


class LlamaCppOptions(BackendOptions):
    """Options of the llamacpp backend, grouped by concern."""

    # where the model runs
    n_gpu_layers: int = Field(0, description="layers to offload to the GPU; -1 = all (needs a CUDA build)")
    gpu_memory: str | None = Field(None, description="GPU-memory budget such as 6GiB; picks n_gpu_layers itself")
    n_threads: int | None = Field(None, description="CPU threads (default: free physical cores, see below)")
    extra_buffers: bool | None = Field(None, description="llama.cpp's repacked CPU weight buffers (AMX/AVX); "
                                       "default: off where the CPU advertises AMX, which crashes some VMs")
    # context and batching
    n_ctx: int = Field(4096, description="context window in tokens (prompt + answer)")
    n_batch: int = Field(512, description="prompt tokens evaluated per step")
    flash_attn: bool = Field(False, description="use flash attention")
    cache_type: Literal["f16", "f32", "q8_0"] = Field("f16", description="KV-cache type")
    prefix_cache: bool = Field(True, description="reuse the evaluated shared prompt prefix between posts")
    parallel: int | None = Field(None, ge=1, description="posts decoded together, each with its own n_ctx window "
                                 f"(KV cache × parallel); 1 = one at a time; default {CPU_PARALLEL} on CPU, "
                                 f"{GPU_PARALLEL} with offload, with gpu_memory the most (≤ {BUDGET_PARALLEL[0]}) "
                                 "that keep every layer on the GPU")
    # decoding
    constrained: bool = Field(True, description="decode only answers in the task's format (GBNF grammar)")
    temperature: float = Field(0.0, description="0 = greedy")
    top_p: float = Field(1.0, description="nucleus sampling when temperature > 0")


def placement(options: LlamaCppOptions, path: Path, can_offload: bool) -> tuple[int, int]:
    """``(parallel, n_gpu_layers)`` for ``options``: as given, or defaults chosen from the device and the budget.

    Without a ``gpu_memory`` budget: :data:`CPU_PARALLEL` sequences on CPU, :data:`GPU_PARALLEL`
    with offload. With one, the layer count is computed with the KV cache of every sequence
    counted; when ``parallel`` is not given, it is the largest of :data:`BUDGET_PARALLEL` that
    still keeps every layer on the GPU (the smallest if none does).

    Raises:
        OptionsError: both ``n_gpu_layers`` and ``gpu_memory``, a bad size, or more sequences than llama.cpp allows.
    """
    from mentalglm.backends.llamacpp_native import max_parallel_sequences

    if options.gpu_memory is not None and options.n_gpu_layers != 0:
        raise OptionsError("backend 'llamacpp': give n_gpu_layers or gpu_memory, not both")
    if options.parallel is not None and options.parallel > max_parallel_sequences():
        raise OptionsError(f"backend 'llamacpp': parallel is at most {max_parallel_sequences()} (llama.cpp's limit)")
    offloading = can_offload and (options.gpu_memory is not None or options.n_gpu_layers != 0)
    if options.gpu_memory is None:
        return options.parallel or (GPU_PARALLEL if offloading else CPU_PARALLEL), options.n_gpu_layers
    if options.parallel is not None or not offloading:
        parallel = options.parallel or CPU_PARALLEL
        return parallel, _layers_in_budget(options, path, parallel)[0]
    for parallel in BUDGET_PARALLEL:
        layers, blocks = _layers_in_budget(options, path, parallel)
        if layers > blocks:  # every block and the output matrix
            return parallel, layers
    return parallel, layers


def _layers_in_budget(options: LlamaCppOptions, path: Path, parallel: int) -> tuple[int, int]:
    """``(n_gpu_layers, blocks)``: what the gpu_memory budget holds with ``parallel`` windows of KV cache."""
    from mentalglm.backends.gpu_budget import layer_costs, parse_bytes

    costs = layer_costs(path, options.n_ctx, _KV_BYTES[options.cache_type], n_seq=parallel)
    layers = costs.layers_that_fit(parse_bytes(options.gpu_memory))
    log.info("llamacpp: %s of GPU memory fits %d layers at n_ctx=%d × %d sequence(s)", options.gpu_memory, layers,
             options.n_ctx, parallel)
    return layers, costs.n_layers


class LlamaCppBackend(Backend):
    """Runs a GGUF model with llama.cpp.

    Args:
        model: path of a ``.gguf`` file (``mentalglm export`` writes one).
        options: :class:`LlamaCppOptions` or a mapping.

    With ``parallel`` > 1 (the default) the posts of one :meth:`generate` call are decoded
    together in a multi-sequence llama.cpp context (:mod:`~mentalglm.backends.llamacpp_batch`),
    each with its own ``n_ctx`` window and sampler chain; answers equal those of ``parallel=1``
    (on quantized files up to llama.cpp's rounding, which differs between one and many tokens per call).
    The Analyzer hands the backend ``batch_size`` posts per call; by default
    :attr:`preferred_batch_size`, four per slot, which keeps the slots full while posts end.

    Attributes:
        parallel: sequences decoded together (1: one post at a time).
        offloaded_layers, total_layers: what went to the GPU, of how many blocks.

    Raises:
        MentalGLMError: llama-cpp-python missing, the file missing or not loadable.
        OptionsError: both ``n_gpu_layers`` and ``gpu_memory``, a bad memory size, or more
            parallel sequences than llama.cpp allows.

    Example:
        >>> with LlamaCppBackend("mentalglm-q4_k_m.gguf", {"gpu_memory": "6GiB"}) as backend:  # doctest: +SKIP
        ...     print(backend.offloaded_layers, "of", backend.total_layers, "layers on the GPU,",
        ...           backend.parallel, "posts at a time")
    """

    name = "llamacpp"
    description = ("GGUF models with llama.cpp (CPU or CUDA offload), grammar-constrained, prefix reuse, "
                   "parallel sequences")
    Options = LlamaCppOptions
    capabilities = frozenset({"generate", "score_labels"})

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        from mentalglm.backends.llamacpp_native import load_llama_cpp

        llama_cpp = load_llama_cpp()
        path = Path(model)
        if not path.is_file():
            raise MentalGLMError(f"{path}: no such GGUF file")
        opts = self.options
        can_offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.parallel, n_gpu_layers = placement(opts, path, can_offload)
        cache = _CACHE_TYPES[opts.cache_type]
        # Not every logical core: hyper-threads and busy cores slow llama.cpp down (core/threads.py).
        threads = opts.n_threads or default_threads()
        log.info("llamacpp: %d CPU threads, %d parallel sequence(s)", threads, self.parallel)
        # With parallel sequences the Llama object serves only tokens and vocabulary: its own
        # context stays small, the work happens in the multi-sequence context opened below.
        n_ctx, n_batch = (opts.n_ctx, opts.n_batch) if self.parallel == 1 else (_AUX_CTX, _AUX_BATCH)
        self._decoder = None
        try:
            self.llm = open_llama(
                path, extra_buffers=opts.extra_buffers, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                n_batch=n_batch, n_threads=threads, n_threads_batch=threads, flash_attn=opts.flash_attn,
                type_k=cache, type_v=cache, seed=opts.seed)
            if self.parallel > 1:
                from mentalglm.backends.llamacpp_native import BatchContext

                context = BatchContext(self.llm, n_seq=self.parallel, n_ctx_seq=opts.n_ctx,
                                       n_batch=max(opts.n_batch, self.parallel), n_threads=threads,
                                       type_k=cache, type_v=cache, flash_attn=opts.flash_attn)
                self._decoder = ParallelDecoder(context, prefix_cache=opts.prefix_cache)
        except ValueError as exc:  # llama-cpp-python reports load failures as ValueError
            self.close()
            raise MentalGLMError(f"{path}: llama.cpp could not load it ({exc})") from None
        self._llama_cpp = llama_cpp
        self._grammars: OrderedDict = OrderedDict()
        self._recent_tokens: dict[tuple[str, bool], list[int]] = {}
        self._is_end = end_of_generation(self.llm)
        # BOS once: where the GGUF says add_bos_token and the prompt text does not start with it
        # (GLM-4 prompts carry [gMASK]<sop> as text; Gemma's answers go wrong without its <bos>).
        self._start_tokens = model_start_tokens(self.llm)
        self._pieces = TokenPieces(self.llm)
        self._continuations = ContinuationTokens(self.llm, self._pieces)
        metadata = self.llm.metadata or {}
        self.total_layers = int(metadata.get(f"{metadata.get('general.architecture')}.block_count", 0))
        wanted = self.total_layers + 1 if n_gpu_layers < 0 else n_gpu_layers
        self.offloaded_layers = min(wanted, self.total_layers + 1) if can_offload else 0
        log.info("llamacpp: %s loaded, %d of %d layers offloaded to the GPU%s", path.name,
                 min(self.offloaded_layers, self.total_layers), self.total_layers,
                 "" if can_offload or not wanted else " (this llama-cpp-python build has no GPU support)")

    # -- tokens ------------------------------------------------------------------------------
    def _tokenize(self, text: str, special: bool = True) -> list[int]:
        # The Analyzer counts a prompt's tokens (to fit the context) before generating it: remember
        # a batch's worth (parallel runs take big batches) so each prompt is tokenized once.
        key = (text, special)
        ids = self._recent_tokens.get(key)
        if ids is None:
            ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            if special and self._start_tokens and ids[: len(self._start_tokens)] != self._start_tokens:
                ids = self._start_tokens + ids  # the GGUF asks for BOS and the text does not carry it already
            if len(self._recent_tokens) >= _RECENT_PROMPTS:
                self._recent_tokens.pop(next(iter(self._recent_tokens)))
            self._recent_tokens[key] = ids
        return list(ids)

    def token_count(self, text: str) -> int:
        """Tokens of prompt ``text``: special tokens parsed (GLM-4: ``[gMASK]<sop>``), BOS as the model asks."""
        return len(self._tokenize(text))

    @property
    def context_length(self) -> int:
        """The context window of one post (with parallel sequences: of each sequence)."""
        return self._decoder.context.n_ctx_seq if self._decoder else self.llm.n_ctx()

    def identity(self) -> dict:
        """The GGUF's digest, the parallel sequences in effect (answers of quantized files can differ between
        1 and 8) and the llama-cpp-python version."""
        import llama_cpp

        return {**super().identity(), "parallel": self.parallel, "llama_cpp_python": llama_cpp.__version__}

    def chat_template(self):
        """The GGUF's ``tokenizer.chat_template``, with its BOS and EOS tokens as text; None without one."""
        from mentalglm.core.prompt import ChatTemplate

        text = (self.llm.metadata or {}).get("tokenizer.chat_template")
        if not text:
            return None
        bos, eos = bos_eos_texts(self.llm, self._pieces)
        return ChatTemplate(text=text, source=Path(self.model).name, bos_token=bos, eos_token=eos)

    @property
    def preferred_batch_size(self) -> int:
        """A few posts per slot, so slots are refilled as posts end instead of draining each batch."""
        return max(8, 4 * self.parallel)

    # -- generation --------------------------------------------------------------------------
    def _grammar(self, response_format):
        key = response_format.gbnf()
        if key in self._grammars:
            self._grammars.move_to_end(key)
        else:
            self._grammars[key] = self._llama_cpp.LlamaGrammar.from_string(key, verbose=False)
            if len(self._grammars) > _GRAMMARS_KEPT:  # evidence grammars are per post: keep the recent ones
                self._grammars.popitem(last=False)
        return self._grammars[key]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Complete the prompts, ``parallel`` at a time (1: in turn); the shared prefix is evaluated once.

        Raises:
            MentalGLMError: a prompt does not fit the context window.
        """
        if self._decoder is None:
            return [self._complete(request) for request in requests]
        jobs = [self._job(request) for request in requests]
        try:
            outcomes = self._decoder.generate(jobs)
        except PromptTooLong as exc:
            raise MentalGLMError(str(exc)) from None
        return [self._completion(request, job.tokens, outcome.generated, outcome.finish)
                for request, job, outcome in zip(requests, jobs, outcomes)]

    def _continuation(self, request: GenerationRequest) -> Continuation:
        budget = request.max_new_tokens if request.max_new_tokens is not None else self.options.max_new_tokens
        return Continuation(budget, request.stop, self._is_end, self._detokenize)

    def _request_grammar(self, request: GenerationRequest):
        return self._grammar(request.response_format) if self.options.constrained and request.response_format else None

    def _job(self, request: GenerationRequest) -> Job:
        from mentalglm.backends.llamacpp_native import SequenceSampler

        opts, grammar = self.options, self._request_grammar(request)
        # Every post's chain starts from the same seed, as the one-at-a-time path reseeds per post.
        return Job(self._tokenize(request.prompt), self._continuation(request),
                   lambda: SequenceSampler(self.llm, temperature=opts.temperature, top_p=opts.top_p, seed=opts.seed,
                                           grammar=grammar, continuations=self._continuations))

    def _complete(self, request: GenerationRequest) -> Completion:
        # Our own token loop rather than create_completion: that one drops control tokens and
        # invalid UTF-8 from the text and runs past max_tokens to finish a character, so the
        # same tokens would read differently from the torch backend's answer. Sampling is the
        # parallel path's (SequenceSampler): sample, then check the one token against the grammar.
        from mentalglm.backends.llamacpp_native import OwnContext, SequenceSampler

        opts = self.options
        tokens = self._tokenize(request.prompt)
        continuation = self._continuation(request)
        finish = "length"
        if continuation.budget > 0:
            self._evaluate(tokens)
            sampler = SequenceSampler(self.llm, temperature=opts.temperature, top_p=opts.top_p, seed=opts.seed,
                                      grammar=self._request_grammar(request), continuations=self._continuations)
            context = OwnContext(self.llm)
            try:
                while True:
                    token = sampler.sample(context, -1)
                    finish = continuation.accept(token)
                    if finish:
                        break
                    self.llm.eval([token])
            finally:
                sampler.close()
        return self._completion(request, tokens, continuation.generated, finish)

    def _completion(self, request: GenerationRequest, tokens: list[int], generated: list[int],
                    finish: str) -> Completion:
        text = self._detokenize(generated)
        cuts = [text.find(stop) for stop in request.stop if stop and stop in text]
        if cuts:
            text = text[: min(cuts)]
        return Completion(request.id, text, {"prompt_tokens": len(tokens), "completion_tokens": len(generated)}, finish)

    def _detokenize(self, ids: list[int]) -> str:
        """Token ids → text as transformers decodes them (control tokens kept, broken UTF-8 as U+FFFD)."""
        return self._pieces.text(ids).decode("utf-8", "replace")

    # -- label scoring -----------------------------------------------------------------------
    def score_labels(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Summed log-probabilities of each candidate's tokens after ``prompt``, reusing the prompt's KV cache."""
        if self._decoder is not None:
            return self.score_labels_batch([prompt], candidates)[0]
        prompt_ids = self._tokenize(prompt)
        self._evaluate(prompt_ids)
        first = log_softmax(self._last_logits())
        scores = []
        for candidate in candidates:
            ids = self._tokenize(candidate, special=False)
            total = float(first[ids[0]])
            self.llm.n_tokens = len(prompt_ids)  # drop the previous candidate, keep the prompt
            for previous, token in zip(ids, ids[1:]):
                self.llm.eval([previous])
                total += float(log_softmax(self._last_logits())[token])
            scores.append(total)
        return scores

    def score_labels_batch(self, prompts: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        """:meth:`score_labels` for several prompts; with parallel sequences they are scored together.

        Each prompt is evaluated on top of the shared prefix in a slot of its own, then every
        candidate longer than one token is evaluated after all of them in one call.
        """
        if self._decoder is None:
            return [self.score_labels(prompt, candidates) for prompt in prompts]
        ids = [self._tokenize(candidate, special=False) for candidate in candidates]
        try:
            return self._decoder.score([self._tokenize(prompt) for prompt in prompts], ids)
        except PromptTooLong as exc:
            raise MentalGLMError(str(exc)) from None

    def _evaluate(self, ids: list[int]) -> None:
        """Bring the KV cache to exactly ``ids``, re-evaluating only what differs from what it holds."""
        held = list(self.llm.input_ids[: self.llm.n_tokens]) if self.options.prefix_cache else []
        common = 0
        for a, b in zip(held, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # the last prompt token must be evaluated for its logits
        self.llm.n_tokens = common
        self.llm.eval(ids[common:])

    def _last_logits(self) -> np.ndarray:
        return last_logits(self.llm)

    def close(self) -> None:
        """Free the model and its contexts (native memory)."""
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.context.close()  # before the model it runs on
            self._decoder = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
