"""The one place that touches llama-cpp-python below its public high-level API.

llama_cpp with its C-level logs routed to Python logging, so they stay off stderr by default;
``Llama`` objects opened with the model parameters its constructor does not expose; the few
reads of a ``Llama`` object's internals the backend needs (the vocabulary handle for
end-of-generation tokens, the last row of logits); and the low-level batch API for parallel
sequences (:class:`BatchContext`: a multi-sequence context on a ``Llama``'s model, with one KV
stream per sequence; :class:`SequenceSampler`: one sampler chain per sequence). When
llama-cpp-python renames them, only this module changes.

llama.cpp prints model-loading and quantization chatter from C; ``verbose=False`` does not
silence all of it. Installing one log callback sends every line to the ``mentalglm.llama_cpp``
logger: errors at WARNING, warnings at INFO (``mentalglm -v``), the rest at DEBUG (``-vv``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mentalglm.backends.grammar_utf8 import TokenBytesIndex, utf8_step

log = logging.getLogger("mentalglm.llama_cpp")
_callback = None  # kept referenced: llama.cpp holds a raw pointer to it
#: ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_LEVELS = {4: logging.WARNING, 3: logging.INFO}
_previous = [logging.DEBUG]


def load_llama_cpp():
    """Import llama_cpp (once) with the quiet log callback installed.

    Raises:
        MentalGLMError: llama-cpp-python is not installed.
    """
    global _callback
    try:
        import llama_cpp
    except ImportError:
        from mentalglm.core.errors import MentalGLMError

        raise MentalGLMError("llama-cpp-python is not installed: pip install 'mentalglm[llamacpp]'") from None
    if _callback is None:
        @llama_cpp.llama_log_callback
        def _route(level: int, text: bytes, user_data) -> None:
            python_level = _previous[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
            _previous[0] = python_level
            message = text.decode("utf-8", "replace").rstrip()
            if message:
                log.log(python_level, "%s", message)

        _callback = _route
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    return llama_cpp


@contextlib.contextmanager
def llama_cpp_quiet() -> Iterator:
    """Context giving the llama_cpp module with quiet logs (the callback stays installed)."""
    yield load_llama_cpp()


def end_of_generation(llm) -> Callable[[int], bool]:
    """A test for ``llm``'s end-of-generation tokens (GLM-4: ``<|endoftext|>``, ``<|user|>``, ``<|observation|>``)."""
    llama_cpp = load_llama_cpp()
    vocab = llm._model.vocab  # private: llama-cpp-python exposes no public vocab handle
    return lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))


class TokenPieces:
    """Token ids → their bytes, whole, with special tokens rendered (what transformers decodes).

    llama-cpp-python's own ``detokenize`` reads each piece into a 32-byte buffer and drops a longer
    one without a word — a GLM vocabulary has tokens of eleven Chinese characters and more (33+
    bytes), which the grammar sees and the text then lacks. Here a piece that does not fit is read
    again into a buffer of the size llama.cpp asks for. Pieces are cached per token id.
    """

    def __init__(self, llm):
        self._llama_cpp = load_llama_cpp()
        self._vocab = llm._model.vocab  # private: llama-cpp-python exposes no public vocab handle
        self._cache: dict[int, bytes] = {}

    def piece(self, token: int) -> bytes:
        """The bytes of one token."""
        found = self._cache.get(token)
        if found is None:
            size = 64
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, True)
                if n >= 0:
                    break
                size = -n  # llama.cpp answers a buffer too small with minus the size it needs
            found = self._cache[token] = buffer.raw[:n]
        return found

    def text(self, tokens) -> bytes:
        """The bytes of a token sequence (pieces concatenated: byte-level BPE adds no spaces of its own)."""
        return b"".join(self.piece(int(token)) for token in tokens)


def last_logits(llm) -> np.ndarray:
    """The logits after the last evaluated token, as float64.

    Without ``logits_all`` llama-cpp-python keeps no scores of its own, so the row is read
    from the context directly.
    """
    pointer = load_llama_cpp().llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def cpu_advertises_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU flags list Intel AMX tiles (``amx_tile`` in ``/proc/cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    return any(line.startswith("flags") and " amx_tile" in line for line in cpuinfo.splitlines())


def default_extra_buffers() -> bool:
    """Whether to let llama.cpp repack weights into its extra CPU buffer types (AMX, AVX repack).

    Off where the CPU advertises AMX: on such virtual machines (seen on a 2-core Xeon guest
    whose kernel grants the AMX permission) llama.cpp's AMX matmul dies with SIGILL on
    ``tilezero`` for q8_0 weights, taking the whole process down. Without extra buffers the
    same weights run on the plain AVX-512 kernels; ``-O extra_buffers=true`` turns them back on
    where AMX works.
    """
    return not cpu_advertises_amx()


@contextlib.contextmanager
def _model_params(**fields) -> Iterator[None]:
    # Llama() builds its llama_model_params from llama_model_default_params() and exposes only
    # some fields; for the others, the defaults are amended for the duration of one load.
    module = load_llama_cpp().llama_cpp
    original = module.llama_model_default_params

    def amended():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    module.llama_model_default_params = amended
    try:
        yield
    finally:
        module.llama_model_default_params = original


def open_llama(path, *, extra_buffers: bool | None = None, **kwargs):
    """A ``llama_cpp.Llama`` for ``path`` with quiet logs and a safe choice of weight buffers.

    Args:
        path: the GGUF file.
        extra_buffers: allow llama.cpp's extra CPU buffer types (None: :func:`default_extra_buffers`).
        **kwargs: passed to ``llama_cpp.Llama``.
    """
    llama_cpp = load_llama_cpp()
    extra = default_extra_buffers() if extra_buffers is None else extra_buffers
    kwargs.setdefault("verbose", False)
    with _model_params(use_extra_bufts=extra):
        return llama_cpp.Llama(str(path), **kwargs)


# -- many sequences at once (the llama_batch API) -------------------------------------------------


class BatchDecodeError(RuntimeError):
    """``llama_decode`` refused a batch; ``code`` is its return value (1: no room in the KV cache)."""

    def __init__(self, code: int):
        super().__init__(f"llama_decode returned {code}" + (" (no room in the KV cache)" if code == 1 else ""))
        self.code = code


def max_parallel_sequences() -> int:
    """The most sequences one llama.cpp context can hold (``llama_max_parallel_sequences``)."""
    return int(load_llama_cpp().llama_max_parallel_sequences())


class BatchContext:
    """A second llama.cpp context on an open ``Llama``'s model that decodes many sequences per call.

    Each sequence has its own KV-cache stream of ``n_ctx_seq`` cells (``kv_unified`` off): a
    sequence's attention then spans only its own tokens however many run beside it, where one
    shared buffer would make every token attend over (and mask) the cells of all the others. A
    stream copy (:meth:`copy`) shares an evaluated prefix between sequences.

    Args:
        llm: the ``llama_cpp.Llama`` whose model (and weights, offload and all) is used.
        n_seq: sequences (``n_seq_max``).
        n_ctx_seq: KV cells per sequence: its context window.
        n_batch: the most tokens one :meth:`decode` takes (``n_batch`` = ``n_ubatch``).
        n_threads: CPU threads.
        type_k, type_v: KV-cache GGML types (0 = f32, 1 = f16, 8 = q8_0).
        flash_attn: flash attention on or off (never "auto": logits must not depend on the machine).

    Raises:
        ValueError: llama.cpp could not create the context (memory).
    """

    def __init__(self, llm, *, n_seq: int, n_ctx_seq: int, n_batch: int, n_threads: int, type_k: int = 1,
                 type_v: int = 1, flash_attn: bool = False):
        from llama_cpp import _internals

        llama_cpp = load_llama_cpp()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        params.type_k, params.type_v = type_k, type_v
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.kv_unified = False
        params.no_perf = True
        # LlamaContext frees the native context before its model, whichever is closed first.
        self._context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._ctx = self._context.ctx
        self._memory = self._context.memory
        self._llama_cpp = llama_cpp
        self.n_seq = int(llama_cpp.llama_n_seq_max(self._ctx))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self.n_batch = n_batch
        self.n_vocab = llm.n_vocab()
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    @property
    def native(self):
        """The ``llama_context`` pointer (for samplers)."""
        return self._ctx

    def decode(self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]) -> None:
        """Evaluate one batch: token ``i`` at ``positions[i]`` of sequence ``seqs[i]``; ``logits[i]`` keeps its row.

        Raises:
            BatchDecodeError: llama.cpp refused the batch (the KV cache is left as before).
        """
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, pos, seq, keep) in enumerate(zip(tokens, positions, seqs, logits)):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.seq_id[i][0] = seq
            batch.n_seq_id[i] = 1
            batch.logits[i] = keep
        code = self._llama_cpp.llama_decode(self._ctx, batch)
        if code != 0:
            raise BatchDecodeError(code)

    def logits(self, index: int) -> np.ndarray:
        """The logits row of the ``index``-th token of the last batch (one that kept its row), as float64."""
        pointer = self._llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)

    def copy(self, source: int, target: int) -> None:
        """Make ``target`` hold what ``source`` holds (a whole-stream copy, done before the next decode)."""
        self._llama_cpp.llama_memory_seq_rm(self._memory, target, -1, -1)
        self._llama_cpp.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def truncate(self, seq: int, length: int) -> None:
        """Drop the cells of ``seq`` at positions ``length`` and later."""
        self._llama_cpp.llama_memory_seq_rm(self._memory, seq, length, -1)

    def close(self) -> None:
        """Free the batch and the context (the model stays with its ``Llama``)."""
        if self._batch is not None:
            self._llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()


#: llama.cpp's ``llama_token_data`` (id, logit, p) as a numpy record, for candidate arrays.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
#: Greedy decoding offers a rejected step's best 64, then best 4,096 tokens to the grammar before the
#: whole vocabulary: a grammar pass over 262k tokens costs ~20 ms, over 64 well under one.
GREEDY_SHORTLISTS = (64, 4096)


class ContinuationTokens:
    """Which tokens UTF-8 allows where the grammar's decoder stands (:class:`TokenBytesIndex` of the pieces
    llama.cpp's grammar reads), end-of-generation tokens included: llama.cpp's grammar refuses every other
    token, whatever the rules say, so a greedy search limited to them finds the same best allowed token.
    Built once per model, on first need.
    """

    def __init__(self, llm, pieces: TokenPieces):
        self._llm, self._pieces, self._index, self._ends = llm, pieces, None, ()

    def piece(self, token: int) -> bytes:
        """The bytes the grammar reads for ``token``."""
        return self._pieces.piece(token)

    def candidates(self, inside_character: bool) -> np.ndarray:
        """The ids (ascending) that can follow, inside an unfinished character or between characters."""
        if self._index is None:
            n_vocab, is_end = self._llm.n_vocab(), end_of_generation(self._llm)
            self._index = TokenBytesIndex([self._pieces.piece(t) for t in range(n_vocab)])
            self._ends = [t for t in range(n_vocab) if is_end(t)]
        return self._index.utf8_allowed_ids(inside_character, self._ends)


class SequenceSampler:
    """One sequence's own sampler: sample first, then check the one token against the grammar.

    The sampler chain (greedy, or top-p and temperature with a dist sampler seeded with ``seed``,
    built as ``Llama.generate`` builds it) carries no grammar. A sampled token is offered to the
    sequence's grammar alone (a one-token candidate array); only when the grammar rejects it do
    more tokens go through the grammar and the chain pick again among what is left — what
    llama.cpp's own ``common_sampler`` does, with the whole vocabulary. On a 262k-token vocabulary
    a grammar pass over every token costs more than the decode step itself, so greedy decoding
    first tries the best few thousand tokens (:meth:`_resample`). Greedy answers are exactly those
    of grammar-first sampling (the best token, if allowed, is the best allowed token); sampled ones
    draw from the unconstrained distribution first, as llama.cpp's server does. Greedy decoding
    reads the argmax of the logits row in place (the first maximum, as llama.cpp's greedy sampler
    picks it).

    Args:
        llm: the ``Llama`` whose chain construction and vocabulary are used.
        temperature, top_p: as the backend's options.
        seed: the seed of this sequence's random state.
        grammar: a ``llama_cpp.LlamaGrammar`` or None.
        continuations: the model's :class:`ContinuationTokens`: with it, a greedy step inside an
            unfinished UTF-8 character searches only the tokens that can continue it.

    Attributes:
        rejections: how many sampled tokens the grammar refused.
        full_passes: how many of those took a grammar pass over the whole vocabulary.
    """

    def __init__(self, llm, *, temperature: float, top_p: float, seed: int, grammar=None,
                 continuations: ContinuationTokens | None = None):
        llama_cpp = self._llama_cpp = load_llama_cpp()
        self._chain = self._grammar = None
        self._continuations, self._utf8 = continuations, (0, 0)
        self.rejections = self.full_passes = 0
        if temperature != 0.0:
            previous = llm._seed
            llm.set_seed(seed)
            try:
                # private: the very chain Llama.generate samples with (same samplers, same order), no grammar
                self._chain = llm._init_sampler(top_k=0, top_p=top_p, min_p=0.0, temp=temperature,
                                                repeat_penalty=1.0, grammar=None)
            finally:
                llm.set_seed(previous)
        if grammar is not None:
            self._grammar = llama_cpp.llama_sampler_init_grammar(
                llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
            if not self._grammar:
                raise ValueError("llama.cpp could not compile the answer grammar")
            self._one = (llama_cpp.llama_token_data * 1)()
            self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)

    def sample(self, context, index: int) -> int:
        """Sample from row ``index`` of the context's last batch and advance the grammar with the token.

        Args:
            context: a :class:`BatchContext`, or :class:`OwnContext` (a ``Llama``'s own context).
            index: the row (-1: the last).
        """
        llama_cpp = self._llama_cpp
        ctx, n_vocab = context.native, context.n_vocab
        if self._chain is None:
            pointer = llama_cpp.llama_get_logits_ith(ctx, index)
            token = int(np.ctypeslib.as_array(pointer, shape=(n_vocab,)).argmax())
        else:
            token = int(llama_cpp.llama_sampler_sample(self._chain.sampler, ctx, index))
        if self._grammar is None:
            return token
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if self._one[0].logit == float("-inf"):
            token = self._resample(ctx, n_vocab, index)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        if self._continuations is not None:  # where the grammar's UTF-8 decoder now stands
            step = utf8_step(self._utf8, self._continuations.piece(token))
            self._utf8 = (0, 0) if step is None else step[:2]
        return token

    def _resample(self, ctx, n_vocab: int, index: int) -> int:
        """The chain's pick among the tokens the grammar allows.

        Greedy first offers the grammar the best tokens UTF-8 allows (:data:`GREEDY_SHORTLISTS`): the
        best allowed one among them is the best allowed token of the whole vocabulary, unless none is
        allowed or it ties with the shortlist's worst (a tie outside could win on a lower id) — then
        the next, longer list, then all the tokens UTF-8 allows; sampling, and greedy if nothing was
        allowed there, passes the whole vocabulary through the grammar.
        """
        self.rejections += 1
        logits = np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
        if self._chain is None:
            # UTF-8 alone rules out the continuation tokens between characters and all others inside one:
            # the search runs over the rest, best first — exact, and a model's odd byte token no longer
            # costs a grammar pass over all 150k–260k tokens.
            pool = (np.arange(n_vocab, dtype=np.int32) if self._continuations is None
                    else self._continuations.candidates(self._utf8[1] > 0))
            for size in GREEDY_SHORTLISTS:
                if size >= len(pool):
                    break
                shortlist = pool[np.argpartition(logits[pool], -size)[-size:]]
                candidates = self._through_grammar(np.sort(shortlist), logits)
                best = int(candidates["logit"].argmax())  # first maximum: the lowest id among ties
                if candidates["logit"][best] > logits[shortlist].min():
                    return int(candidates["id"][best])
            if self._continuations is not None:
                candidates = self._through_grammar(pool, logits)
                best = int(candidates["logit"].argmax())
                if candidates["logit"][best] > float("-inf"):
                    return int(candidates["id"][best])
        self.full_passes += 1
        candidates = self._through_grammar(np.arange(n_vocab, dtype=np.int32), logits)
        if self._chain is None:  # greedy: the first best allowed token, in id order as llama.cpp's greedy scans
            return int(candidates["logit"].argmax())
        array = self._array(candidates)
        self._llama_cpp.llama_sampler_apply(self._chain.sampler, ctypes.byref(array))
        token = int(array.data[array.selected].id)
        self._llama_cpp.llama_sampler_accept(self._chain.sampler, token)
        return token

    def _array(self, candidates: np.ndarray):
        return self._llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(self._llama_cpp.llama_token_data)), size=len(candidates),
            selected=-1, sorted=False)

    def _through_grammar(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Candidates ``ids`` (ascending) with their logits, those the grammar refuses set to -inf."""
        candidates = np.empty(len(ids), dtype=TOKEN_DATA)
        candidates["id"], candidates["logit"], candidates["p"] = ids, logits[ids], 0.0
        array = self._array(candidates)
        self._llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return candidates

    def close(self) -> None:
        """Free the chain and the grammar."""
        if self._chain is not None:
            self._chain.close()
            self._chain = None
        if self._grammar is not None:
            self._llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


class OwnContext:
    """A ``Llama``'s own context as :meth:`SequenceSampler.sample` reads it (one sequence, ``llm.eval``)."""

    def __init__(self, llm):
        self.native = llm.ctx
        self.n_vocab = llm.n_vocab()


def bos_eos_texts(llm, pieces: TokenPieces) -> tuple[str, str]:
    """The texts of the model's BOS and EOS tokens (``""`` where it has none), as a chat template names them."""
    llama_cpp = load_llama_cpp()
    vocab = llm._model.vocab  # private: llama-cpp-python exposes no public vocab handle
    return tuple(pieces.piece(token).decode("utf-8", "replace") if token >= 0 else ""
                 for token in (int(llama_cpp.llama_vocab_bos(vocab)), int(llama_cpp.llama_vocab_eos(vocab))))


def model_start_tokens(llm) -> list[int]:
    """The tokens the GGUF asks to start every prompt with: ``[BOS]`` when ``add_bos_token`` is true, else none."""
    llama_cpp = load_llama_cpp()
    vocab = llm._model.vocab  # private: llama-cpp-python exposes no public vocab handle
    if not llama_cpp.llama_vocab_get_add_bos(vocab):
        return []
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    return [bos] if bos >= 0 else []
