"""The inference engine: batches of texts in, one float row per document out, in input order. No Spark here.

How the GPU is kept busy:
- tokenization of the next batch runs on another thread (the Rust tokenizer releases the GIL) while the current
  batch is on the GPU, with a bounded prefetch so memory stays flat;
- documents are sorted by length and cut into micro-batches under a token budget, padded (or packed, with no
  padding at all, when the model offers it);
- micro-batch results stay on the device and come back with one copy per batch: no host sync per micro-batch;
- a batch's work is queued on the GPU before the previous batch's results are awaited (``submit`` / ``collect``,
  one batch ahead in ``predict_batches`` and the Spark stage), so the GPU does not idle while the host finishes a
  batch, hands it on and prepares the next;
- inputs are built in pinned memory and copied without blocking;
- an out-of-memory error halves the micro-batch and retries, giving the same results in the same order, and the
  budget stays lowered for the rest of the run.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from sparkcurate.engine.batching import plan_microbatches, restore_order, split_in_half
from sparkcurate.engine.kernels import usage
from sparkcurate.engine.tokenize import Tokenized, enable_tokenizer_threads, tokenize

log = logging.getLogger(__name__)

#: name -> the activations' dtype. "fp16-split": fp16 activations, each linear layer's fp32 weight kept as two fp16
#: matrices (:mod:`.kernels.split_weights`): probabilities within 1e-2 of fp32 on the benchmark, for a second GEMM
#: per layer.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp16-split": torch.float16}


@dataclass(frozen=True)
class EngineConfig:
    """Limits and speed settings. Plain values, so they travel to executors inside a classifier."""

    max_tokens: int = 512
    max_chars: int | None = None
    token_budget: int | None = None  # tokens per micro-batch; None: 8,192 on CPU, 65,536 on a GPU
    max_batch_size: int = 256  # documents per micro-batch, whatever the budget
    precision: str = "auto"  # auto: fp32 on CPU (exact), fp16 on GPUs (see resolved_precision)
    packed: str = "auto"  # auto: unpadded forward when the model and device support it; on: required; off
    prefetch: int = 2  # batches tokenized ahead of the GPU

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision != "auto":
            if self.precision not in PRECISIONS:
                raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {self.precision!r}")
            return self.precision
        # fp16 keeps 10 mantissa bits to bf16's 7: at the same speed its probabilities are ~8x closer to fp32
        # (benchmark on an H100: largest difference 0.025 vs 0.2; "fp16-split" gets under 1e-2, slower). Its narrow
        # range is guarded: rows that come out non-finite are recomputed in fp32 (predict_tokenized).
        return "fp32" if device.type != "cuda" else "fp16"

    def resolved_budget(self, device: torch.device) -> int:
        if self.token_budget:
            return int(self.token_budget)
        return 65_536 if device.type == "cuda" else 8_192


def tokenizer_identity(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, normalizer, special tokens)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}:{text}".encode()).hexdigest()[:16]


#: Bytes of each of the two pinned buffers that weights are staged through on their way to a GPU.
STAGING_BYTES = 32 << 20


class StagedCopy:
    """Copies of CPU tensors on ``device``, their bytes streamed through two reused host buffers (pinned when
    ``pin``): while the GPU takes one buffer (a copy that does not block the host), the host fills the other. Call
    it per tensor, then :meth:`finish` (the copies are complete once it returns).

    Why: ``module.to("cuda")`` copies each weight from pageable memory, synchronously, and the lean load's weights
    are the safetensors file mapped in memory: the H100's engine step took 0.23 s for a DeBERTa-v3-base there
    against 0.12 s for the full load, whose weights are in ordinary memory (issue 23; benchmarks/NOTES.md). Here
    the host reads the mapping with a plain copy into a reused pinned buffer (~0.05 s for those 735 MB on a 2-core
    CPU) and the transfers overlap the reading. The bytes are copied as they are: the values on the device are
    ``to``'s. A tensor this cannot stream (a subclass, not contiguous, empty) goes through ``to``.
    """

    def __init__(self, device: torch.device, chunk_bytes: int = STAGING_BYTES, pin: bool = True) -> None:
        self.device = device
        self.chunk_bytes = int(chunk_bytes)
        self.pin = pin
        self._buffers: list[torch.Tensor] = []
        self._events: list = [None, None]
        self._slot = 0
        self._used = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not _streamable(tensor):
            return tensor.to(self.device)
        out = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
        src, dst = _bytes_of(tensor.detach()), _bytes_of(out)
        done = 0
        while done < src.numel():
            buffer = self._room()
            take = min(src.numel() - done, self.chunk_bytes - self._used)
            staged = buffer[self._used:self._used + take]
            staged.copy_(src[done:done + take])
            dst[done:done + take].copy_(staged, non_blocking=self.pin)
            self._used += take
            done += take
        return out

    def _room(self) -> torch.Tensor:
        """The buffer to fill now: the current one while it has room, else the other, once the device has taken
        everything that was staged in it."""
        if not self._buffers:
            self._buffers = [torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=self.pin) for _ in range(2)]
        if self._used == self.chunk_bytes:
            self._events[self._slot] = self._record()
            self._slot, self._used = 1 - self._slot, 0
            if self._events[self._slot] is not None:
                self._events[self._slot].synchronize()
        return self._buffers[self._slot]

    def _record(self):
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def finish(self) -> None:
        """Wait until every copy is on the device (the staging buffers can then be reused or freed)."""
        if self.device.type == "cuda" and self._buffers:
            torch.cuda.current_stream(self.device).synchronize()


def _streamable(tensor: torch.Tensor) -> bool:
    """A plain dense tensor whose storage is its bytes in order (no subclass, quantized, sparse or packed dtype)."""
    return (type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.layout == torch.strided
            and not tensor.is_quantized and tensor.is_contiguous() and tensor.numel() > 0
            and tensor.dtype.itemsize >= 1)


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's storage bytes, as a flat uint8 view."""
    flat = tensor.reshape(-1)
    return flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat


def to_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model.to(device)``; onto a GPU, its CPU weights and buffers go through :class:`StagedCopy` (``to`` moves
    the rest: tensors on another GPU, and raises as before for meta tensors). Parameters stay the same objects
    (their data replaced, as ``to`` does), so tied weights stay tied."""
    device = torch.device(device)
    if device.type != "cuda":
        return model.to(device=device)
    staged = StagedCopy(device)
    try:
        return stage_module(model, staged)
    finally:
        staged.finish()


def stage_module(model: torch.nn.Module, staged: StagedCopy) -> torch.nn.Module:
    """Every CPU parameter and buffer of ``model`` replaced by ``staged``'s copy, the others moved by ``to``, through
    the walk ``to`` itself makes (``Module._apply``: a parameter keeps its object, its data replaced)."""
    return model._apply(lambda t: staged(t) if t.device.type == "cpu" else t.to(staged.device))


def to_inference(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 split: bool = False) -> torch.nn.Module:
    """``model`` on ``device`` in ``dtype``, except the children it names in ``fp32_children``, which stay fp32.
    ``split``: its linear layers (outside those children) keep their fp32 weights as fp16 pairs
    (:func:`.split_weights.split_linears`).

    Why: a classification head is a few thousand weights and one tiny GEMM a micro-batch, but in half precision its
    logits (spread over several units) are rounded to fp16's 2^-7 steps above 8, enough to move a probability by up to
    ~2e-3 (benchmarks/NOTES.md, tenth round; on the H100's benchmark the change was within the noise, eleventh
    round, but it costs nothing). Kept children are never converted, so they keep every fp32 bit of the
    checkpoint; the model's forward casts their input.
    """
    model = to_device(model, device)
    keep = tuple(getattr(model, "fp32_children", ()))
    children = dict(model.named_children())
    missing = [name for name in keep if name not in children]
    if missing:
        raise ValueError(f"{type(model).__name__}.fp32_children names {missing}, which are not children of the model")
    if split:
        from sparkcurate.engine.kernels.split_weights import split_linears

        log.info("%d linear layers keep their fp32 weights as fp16 pairs", split_linears(model, dtype, skip=keep))
    if not keep:
        return model.to(dtype=dtype)
    for name, child in children.items():
        child.to(dtype=dtype if name not in keep else torch.float32)
    for tensor in [*model.parameters(recurse=False), *model.buffers(recurse=False)]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)
    return model


def import_packed_kernels(model: torch.nn.Module, device: str | torch.device, packed: str) -> None:
    """Import the packed forward's kernel modules and Triton now, where the engine would use them (a CUDA device,
    a model with a packed forward, ``packed`` not off); an ImportError is left to the engine's own check.

    Why: the engine's packed-support check imports them (~0.1 s, Triton most of it); the load calls this while the
    device's CUDA context is still being created on another thread (``CudaStart``), so that time overlaps it instead
    of following it. Importing a module earlier changes nothing it computes.
    """
    if torch.device(device).type != "cuda" or packed == "off" or not hasattr(model, "forward_packed"):
        return
    try:
        from sparkcurate.engine.deberta_packed import import_kernels
    except ImportError:  # pragma: no cover - the module ships with the package
        return
    import_kernels()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class InferenceEngine:
    """Runs one model over texts. Build once per worker and device; call as many times as there are batches."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: EngineConfig, device: str | torch.device = "cpu"):
        enable_tokenizer_threads()
        self.device = torch.device(device)
        self.config = config
        self.precision = config.resolved_precision(self.device)
        self.dtype = PRECISIONS[self.precision]
        self.model = to_inference(model, self.device, self.dtype, split=self.precision == "fp16-split").eval()
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.budget = config.resolved_budget(self.device)
        #: The kernels this engine chose and ran (:meth:`active_kernels`), filled as it works.
        self.kernel_usage: dict[str, str] = {"precision": self.precision}
        self.packed = self._choose_packed()
        self.oom_retries = 0
        # Engines with equal keys produce identical tokens: several classifiers in one pass tokenize once.
        self.tokenize_key = (type(self).__qualname__, tokenizer_identity(tokenizer), config.max_chars,
                             config.max_tokens)
        log.info("engine on %s, %s, token budget %d, %s forward", self.device, self.precision, self.budget,
                 "packed" if self.packed else "padded")

    def _choose_packed(self) -> bool:
        if self.config.packed == "off" or not hasattr(self.model, "forward_packed"):
            if self.config.packed == "on":
                raise ValueError("packed=on but this model has no packed forward")
            off = self.config.packed == "off"
            self._note_forward(False, "packed=off" if off else "the model has no packed forward")
            return False
        ok, reason = self.model.packed_support(self.device)
        if not ok:
            if self.config.packed == "on":
                raise ValueError(f"packed=on but the packed forward is not usable here: {reason}")
            log.info("padded forward: %s", reason)
        self._note_forward(ok, reason)
        return ok

    def _note_forward(self, packed: bool, reason: str) -> None:
        self.kernel_usage.update(forward="packed" if packed else "padded", forward_reason=reason)

    def active_kernels(self) -> dict[str, str]:
        """The switches in force and the kernels this engine actually ran: precision, packed or padded forward
        (and why), attention back-end (and any fallback with its reason), fused norm, GELU epilogue
        (:func:`sparkcurate.engine.kernels.usage.active_kernels`)."""
        return usage.active_kernels(self.kernel_usage)

    # -- public API ---------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        return tokenize(self.tokenizer, texts, self.config.max_tokens, self.config.max_chars)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """One row of model outputs (probabilities or scores) per text, in input order."""
        return self.predict_tokenized(self.tokenize(texts))

    def predict_batches(self, batches: Iterable[Sequence[str]]) -> Iterator[np.ndarray]:
        """Like ``predict`` for each batch, tokenizing the next batches on another thread meanwhile, and queuing
        each batch's GPU work before waiting for the previous batch's results."""
        return collect_ahead(prefetch(batches, self.tokenize, self.config.prefetch), self.submit, self.collect)

    def predict_tokenized(self, tokens: Tokenized) -> np.ndarray:
        return self.collect(self.submit(tokens))

    @torch.inference_mode()
    def submit(self, tokens: Tokenized) -> "Submitted":
        """Queue the forward passes of a batch (on a GPU: without waiting for them); :meth:`collect` gives the
        results. Out-of-memory back-off happens here, as the allocations are made."""
        if len(tokens) == 0:
            return Submitted(tokens, [], None, None)
        with self._on_device(), usage.recording(self.kernel_usage):
            padded = not self.packed
            chunks: list[tuple[np.ndarray, torch.Tensor]] = []
            for idx in plan_microbatches(tokens.lengths, self.budget, self.config.max_batch_size, padded=padded):
                chunks.extend(self._run_with_backoff(tokens, idx))
            values = torch.cat([out for _, out in chunks]).float()
            order = [idx for idx, _ in chunks]
            if self.device.type != "cuda":
                return Submitted(tokens, order, values, None)
            # One device-to-host copy for the whole batch, queued behind its kernels: no sync per micro-batch.
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return Submitted(tokens, order, host, done)

    @torch.inference_mode()
    def collect(self, submitted: "Submitted") -> np.ndarray:
        """One row of model outputs per document of a :meth:`submit`-ted batch, in input order (waits for it)."""
        n = len(submitted.tokens)
        if n == 0:
            return np.empty((0, 0), dtype=np.float32)
        if submitted.done is not None:
            submitted.done.synchronize()
        values = submitted.values.numpy()
        order = np.concatenate(submitted.order)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            values = values.copy()
            with self._on_device():
                values[bad] = self._rescue_fp32(submitted.tokens, order[bad])
        return restore_order([(order, values)], n, values.shape[1])

    def _on_device(self):
        """Make the engine's GPU the current one while it works.

        Why: Triton kernels (the packed attention) launch on the *current* CUDA device, not on their tensors'
        device. A worker whose model sits on cuda:1 while the current device is still cuda:0 (the default)
        fails with "Pointer argument cannot be accessed from Triton"; measured on the 2-GPU machine.
        """
        import contextlib

        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _rescue_fp32(self, tokens: Tokenized, idx: np.ndarray) -> np.ndarray:
        """Recompute documents whose half-precision outputs overflowed, with an fp32 copy of the model."""
        if self.dtype == torch.float32:
            raise FloatingPointError(f"the model gave non-finite outputs for {len(idx)} documents in fp32")
        log.warning("%d documents overflowed in %s: recomputing them in fp32", len(idx), self.precision)
        if getattr(self, "_fp32_model", None) is None:
            import copy

            self._fp32_model = copy.deepcopy(self.model).float()
        half_model, packed = self.model, self.packed
        self.model, self.packed = self._fp32_model, False
        try:
            out = torch.cat([self._forward(tokens, part)
                             for part in plan_microbatches(tokens.lengths[idx], self.budget,
                                                           self.config.max_batch_size)
                             for part in [idx[part]]])
            order = np.concatenate(plan_microbatches(tokens.lengths[idx], self.budget, self.config.max_batch_size))
        finally:
            self.model, self.packed = half_model, packed
        result = np.empty((len(idx), out.shape[1]), dtype=np.float32)
        result[order] = out.float().cpu().numpy()
        return result

    # -- internals ----------------------------------------------------------------------------------------

    def _run_with_backoff(self, tokens: Tokenized, idx: np.ndarray) -> list[tuple[np.ndarray, torch.Tensor]]:
        try:
            return [(idx, self._forward(tokens, idx))]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if len(idx) <= 1:
                raise RuntimeError(
                    f"out of memory on a single document of {int(tokens.lengths[idx].sum())} tokens: lower "
                    "max_tokens or use a larger GPU"
                ) from exc
        self.oom_retries += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        used = int(tokens.lengths[idx].max() * len(idx)) if not self.packed else int(tokens.lengths[idx].sum())
        self.budget = max(1, min(self.budget, used // 2))
        log.warning("out of memory on %d documents: halving the micro-batch (token budget now %d)",
                    len(idx), self.budget)
        out: list[tuple[np.ndarray, torch.Tensor]] = []
        for half in split_in_half(idx):
            out.extend(self._run_with_backoff(tokens, half))
        return out

    def _forward(self, tokens: Tokenized, idx: np.ndarray) -> torch.Tensor:
        seqs = [tokens.ids[i] for i in idx]
        if self.packed:
            flat = np.concatenate(seqs).astype(np.int64)
            cu = np.zeros(len(seqs) + 1, dtype=np.int32)
            np.cumsum(tokens.lengths[idx], out=cu[1:])
            ids = self._to_device(torch.from_numpy(flat))
            # Boundaries stay on the host: the packed forward reads them without a device sync.
            return self.model.forward_packed(ids, torch.from_numpy(cu), int(tokens.lengths[idx].max()))
        width = max(int(tokens.lengths[idx].max()), 1)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return self.model(self._to_device(torch.from_numpy(ids)), self._to_device(torch.from_numpy(mask)))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def with_config(self, **changes) -> "InferenceEngine":
        """A copy of the settings with changes, sharing the loaded model (used by tests and benchmarks)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.config = replace(self.config, **changes)
        clone.budget = clone.config.resolved_budget(self.device)
        clone.kernel_usage = dict(self.kernel_usage)
        clone.packed = clone._choose_packed()
        return clone


def tokenize_shared(engines: Sequence["InferenceEngine"], texts: Sequence[str]) -> list[Tokenized]:
    """Each engine's tokens for ``texts``, tokenizing once per tokenizer where the results can be derived exactly.

    Engines with the same tokenizer but different limits (domain: 2000 characters / 512 tokens, quality: 6000 /
    1024, both the DeBERTa-v3 tokenizer) are served from one tokenization under the largest limits: a document
    whose character cut gives the same string under both limits gets its ids by truncating the larger encoding
    (:func:`~sparkcurate.engine.tokenize.shrink_ids`, exact for prefix/suffix special-token layouts); only the
    documents that a smaller character cut really shortens are tokenized again. Engines that tokenize differently
    (a prompt around the text) share only with identical engines, as before.
    """
    from sparkcurate.engine.tokenize import derivable, shrink_ids, special_layout

    out: list[Tokenized | None] = [None] * len(engines)
    groups: dict[tuple, list[int]] = {}
    for i, engine in enumerate(engines):
        plain = type(engine).tokenize is InferenceEngine.tokenize
        key = ("plain", engine.tokenize_key[1]) if plain else ("own", engine.tokenize_key)
        groups.setdefault(key, []).append(i)
    for (kind, _), members in groups.items():
        first = engines[members[0]]
        layout = special_layout(first.tokenizer) if kind == "plain" and len(members) > 1 else None
        limits = {(engines[i].config.max_chars, engines[i].config.max_tokens) for i in members} if layout else set()
        if len(limits) <= 1:
            done: dict[tuple, Tokenized] = {}
            for i in members:
                key = engines[i].tokenize_key
                if key not in done:
                    done[key] = engines[i].tokenize(texts)
                out[i] = done[key]
            continue
        chars = [c for c, _ in limits]
        base_chars = None if None in chars else max(chars)
        base_tokens = max(t for _, t in limits)
        base = tokenize(first.tokenizer, texts, base_tokens, base_chars)
        for i in members:
            cfg = engines[i].config
            if (cfg.max_chars, cfg.max_tokens) == (base_chars, base_tokens):
                out[i] = base
                continue
            ids = [shrink_ids(x, cfg.max_tokens, layout) for x in base.ids]
            again = [j for j, t in enumerate(texts) if not derivable(t, cfg.max_chars, base_chars)]
            if again:
                redo = engines[i].tokenize([texts[j] for j in again])
                for j, x in zip(again, redo.ids):
                    ids[j] = x
            out[i] = Tokenized(ids=ids, lengths=np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))
    return out  # type: ignore[return-value]


@dataclass
class Submitted:
    """A batch whose forward passes are queued (:meth:`InferenceEngine.submit`): the tokens, the micro-batches'
    document indices in result order, the results (a pinned host tensor being filled, on a GPU) and the event
    that marks the copy done (None on the CPU, where ``values`` is ready)."""

    tokens: Tokenized
    order: list[np.ndarray]
    values: torch.Tensor | None
    done: "torch.cuda.Event | None"


def collect_ahead(items: Iterable, submit: Callable, collect: Callable) -> Iterator:
    """``collect(submit(item))`` for each item, in order, submitting each item before collecting the one before.

    Why: ``collect`` waits for the GPU. Submitting first keeps the next batch's kernels queued behind the current
    one's, so the GPU keeps working while the host turns results into output and fetches the next input.
    """
    pending, waiting = None, False  # a flag, not ``pending is None``: a submit may return None
    for item in items:
        nxt = submit(item)
        if waiting:
            yield collect(pending)
        pending, waiting = nxt, True
    if waiting:
        yield collect(pending)


_DONE = object()


def prefetch(items: Iterable, work: Callable, depth: int) -> Iterator:
    """``work(item)`` for each item, computed up to ``depth`` items ahead on a background thread.

    Errors in the worker are re-raised in the consumer; the bounded queue keeps at most ``depth`` results in memory.
    """
    if depth <= 0:
        for item in items:
            yield work(item)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def producer() -> None:
        try:
            for item in items:
                if not _put(q, (True, work(item)), stop):
                    return
            _put(q, (True, _DONE), stop)
        except BaseException as exc:  # handed to the consumer, never lost
            _put(q, (False, exc), stop)

    thread = threading.Thread(target=producer, name="sparkcurate-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()


def _put(q: queue.Queue, value, stop: threading.Event) -> bool:
    """Put unless the consumer went away (then the producer thread ends instead of blocking forever)."""
    while not stop.is_set():
        try:
            q.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
