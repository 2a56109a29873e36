"""The inference engine with no Spark: tiny DeBERTa in the published layout vs plain transformers math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparkcurate.classifiers import DomainClassifier
from sparkcurate.engine.batching import plan_microbatches, restore_order
from sparkcurate.engine.runner import EngineConfig, InferenceEngine, collect_ahead, prefetch
from tests.fixtures.reference_math import reference_deberta_probs


@pytest.fixture(scope="module")
def classifier(deberta_dir):
    c = DomainClassifier(model=str(deberta_dir), device="cpu")
    c.preflight()
    return c


@pytest.fixture(scope="module")
def engine(classifier):
    return classifier.load_engine("cpu")


def test_probabilities_equal_reference_math(classifier, engine, sample_texts):
    texts = sample_texts + ["x", "a " * 3000, "Sports. " * 10]
    got = engine.predict(texts)
    ref = reference_deberta_probs(classifier.model, texts, max_chars=2000, max_tokens=512)
    assert got.shape == ref.shape == (len(texts), 5)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    cols = classifier.postprocess(got)
    assert cols["domain_pred"] == [classifier.labels[i] for i in ref.argmax(axis=1)]


def test_labels_follow_label2id_order(classifier):
    # The fixture writes label2id in a shuffled key order; labels must be sorted by id.
    assert classifier.labels == ["Finance", "Sports", "Science", "News", "Games"]


@pytest.mark.parametrize("budget,batch", [(64, 256), (512, 3), (100_000, 1)])
def test_results_independent_of_micro_batching(engine, sample_texts, budget, batch):
    base = engine.predict(sample_texts)
    other = engine.with_config(token_budget=budget, max_batch_size=batch).predict(sample_texts)
    np.testing.assert_allclose(other, base, atol=1e-5)


def test_empty_batch(engine):
    assert engine.predict([]).shape[0] == 0


def test_plan_microbatches_budget_and_order():
    lengths = np.array([5, 100, 7, 50, 50, 1])
    plan = plan_microbatches(lengths, token_budget=100, max_batch_size=8)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(6))
    assert lengths[plan[0][0]] == 100  # longest first
    for idx in plan:
        assert len(idx) == 1 or lengths[idx].max() * len(idx) <= 100
    packed = plan_microbatches(lengths, token_budget=101, max_batch_size=8, padded=False)
    for idx in packed:
        assert len(idx) == 1 or lengths[idx].sum() <= 101


def test_restore_order_detects_gaps():
    with pytest.raises(RuntimeError):
        restore_order([(np.array([0]), np.ones((1, 2)))], 2, 2)


class _OomAbove(torch.nn.Module):
    """Wraps a model and raises CUDA-style out-of-memory for micro-batches above a size."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []

    def forward(self, input_ids, attention_mask):
        self.calls.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(input_ids, attention_mask)


def test_out_of_memory_halves_and_keeps_order(engine, sample_texts):
    expected = engine.predict(sample_texts)
    wrapped = _OomAbove(engine.model, limit=3)
    oom_engine = InferenceEngine(wrapped, engine.tokenizer, EngineConfig(max_chars=2000, token_budget=100_000))
    got = oom_engine.predict(sample_texts)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert oom_engine.oom_retries > 0 and max(wrapped.calls) > 3
    assert oom_engine.budget < 100_000  # the lowered budget is kept for later batches


def test_out_of_memory_on_one_document_is_an_error(engine):
    oom_engine = InferenceEngine(_OomAbove(engine.model, limit=0), engine.tokenizer, EngineConfig())
    with pytest.raises(RuntimeError, match="single document"):
        oom_engine.predict(["one document"])


def test_other_errors_are_not_swallowed(engine):
    class Broken(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        InferenceEngine(Broken(), engine.tokenizer, EngineConfig()).predict(["a", "b"])


def test_predict_batches_overlaps_and_keeps_order(engine, sample_texts):
    batches = [sample_texts[:5], sample_texts[5:6], [], sample_texts[6:]]
    outs = list(engine.predict_batches(batches))
    assert [len(o) for o in outs] == [5, 1, 0, len(sample_texts) - 6]
    np.testing.assert_allclose(np.concatenate([o for o in outs if len(o)]), engine.predict(sample_texts), atol=1e-5)


def test_collect_ahead_submits_before_collecting_and_keeps_order():
    """Item k + 1 is submitted before item k is collected (the GPU has the next batch queued while the host
    waits for the current one), and results come out in input order, each once."""
    calls = []

    def submit(x):
        calls.append(f"s{x}")
        return x

    def collect(x):
        calls.append(f"c{x}")
        return x * 10

    assert list(collect_ahead(range(3), submit, collect)) == [0, 10, 20]
    assert calls == ["s0", "s1", "c0", "s2", "c1", "c2"]
    assert list(collect_ahead([], submit, collect)) == []
    calls.clear()
    assert list(collect_ahead([7], submit, collect)) == [70] and calls == ["s7", "c7"]
    # A submit that returns None still gets each item collected once (nothing skipped).
    assert list(collect_ahead(range(3), lambda x: None, lambda handle: handle)) == [None, None, None]


def test_submit_then_collect_out_of_order_equals_predict(engine, sample_texts):
    """Two batches in flight at once: each collect gives its own batch's results."""
    first, second = engine.submit(engine.tokenize(sample_texts[:4])), engine.submit(engine.tokenize(sample_texts[4:]))
    got_second, got_first = engine.collect(second), engine.collect(first)
    np.testing.assert_allclose(np.concatenate([got_first, got_second]), engine.predict(sample_texts), atol=1e-5)
    assert engine.collect(engine.submit(engine.tokenize([]))).shape[0] == 0


def test_prefetch_reraises_worker_errors():
    def work(x):
        if x == 2:
            raise KeyError("bad item")
        return x * 10

    got = []
    with pytest.raises(KeyError):
        for v in prefetch(range(5), work, depth=2):
            got.append(v)
    assert got == [0, 10]


def test_character_cut_before_tokenizing(engine):
    long = "word " * 100_000  # 500,000 characters: cut to 2,000 before the tokenizer sees it
    tokens = engine.tokenize([long])
    assert tokens.lengths[0] <= 512
    assert engine.tokenize([long[:2000]]).ids[0].tolist() == tokens.ids[0].tolist()


def test_cpu_precision_is_fp32(engine):
    assert engine.precision == "fp32" and next(engine.model.parameters()).dtype == torch.float32


class _OverflowsInHalf(torch.nn.Module):
    """Returns NaN rows for long documents unless run in fp32: the fp16 overflow the engine must rescue."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        out = self.inner(input_ids, attention_mask)
        if next(self.inner.parameters()).dtype != torch.float32:
            long_rows = attention_mask.sum(1) > 40
            out = torch.where(long_rows[:, None], torch.full_like(out, float("nan")), out)
        return out


def test_non_finite_half_outputs_are_recomputed_in_fp32(engine, sample_texts):
    sample_texts = sample_texts + ["a short one", "tiny", "two words"]
    rounded = copy_module(engine.model).to(torch.bfloat16).float()  # what an fp32 copy of bf16 weights computes
    reference = InferenceEngine(rounded, engine.tokenizer, EngineConfig(max_chars=2000)).predict(sample_texts)
    half = InferenceEngine(_OverflowsInHalf(copy_module(engine.model)), engine.tokenizer,
                           EngineConfig(max_chars=2000, precision="bf16"))
    got = half.predict(sample_texts)
    assert np.isfinite(got).all()
    long_rows = half.tokenize(sample_texts).lengths > 40
    assert long_rows.any() and (~long_rows).any()
    np.testing.assert_allclose(got[long_rows], reference[long_rows], atol=1e-5)


def test_non_finite_in_fp32_is_an_error(engine):
    class Nan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            return torch.full((input_ids.shape[0], 2), float("nan"))

    with pytest.raises(FloatingPointError):
        InferenceEngine(Nan(), engine.tokenizer, EngineConfig()).predict(["a"])


def copy_module(module):
    import copy

    return copy.deepcopy(module)


def test_derived_tokens_equal_direct_tokenization_on_random_limits(deberta_dir):
    """Property: for random texts and random pairs of limits, the ids derived from the larger tokenization
    equal a direct tokenization under the smaller limits (when the character cuts agree), for this tokenizer."""
    import random

    from sparkcurate.engine.tokenize import derivable, shrink_ids, special_layout, tokenize
    from sparkcurate.models.loading import load_tokenizer

    tok = load_tokenizer(deberta_dir)
    layout = special_layout(tok)
    assert layout == (1, 1)  # [CLS] ... [SEP]
    rng = random.Random(11)
    alphabet = "abcdefgh ijk lmn. ,é\\n"
    checked = 0
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        small_c, big_c = sorted(rng.sample([None, 5, 50, 150, 300, 1000], 2), key=lambda c: float("inf") if c is None else c)
        small_t, big_t = sorted(rng.sample([3, 8, 16, 64, 256], 2))
        if not derivable(text, small_c, big_c):
            continue
        base = tokenize(tok, [text], big_t, big_c).ids[0]
        want = tokenize(tok, [text], small_t, small_c).ids[0]
        assert shrink_ids(base, small_t, layout).tolist() == want.tolist(), (text, small_c, big_c, small_t, big_t)
        checked += 1
    assert checked > 50
    assert not derivable("x" * 10, 5, 50) and derivable("x" * 5, 5, 50) and derivable("x" * 99, None, None)


def test_half_precision_keeps_the_head_fp32(engine, sample_texts):
    """fp16/bf16 engines convert the backbone but not ``fp32_children``: the head's weights keep every fp32 bit and
    its logits are not rounded (a logit of 10 in fp16 is only good to 2^-7).

    The head is checked on the very [CLS] states the engine's bf16 backbone produced for the engine's own micro-
    batches (captured by a hook on ``fc``), not on a second bf16 run: bf16 kernels (oneDNN with AMX) give results
    that depend on the batch's shape, so a re-run one document at a time differs by ~5e-4 on such CPUs.
    """
    source = copy_module(engine.model)
    want_fc = {k: v.clone() for k, v in source.fc.state_dict().items()}
    half = InferenceEngine(source, engine.tokenizer, EngineConfig(max_chars=2000, precision="bf16"))
    model = half.model
    assert model.fp32_children == ("fc",)
    assert all(p.dtype == torch.bfloat16 for p in model.model.parameters())
    for name, value in model.fc.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, want_fc[name])

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.fc.register_forward_hook(lambda _m, args, out: seen.append((args[0].clone(), out.clone())))
    try:
        submitted = half.submit(half.tokenize(sample_texts))
    finally:
        hook.remove()
    got = half.collect(submitted)
    order = np.concatenate(submitted.order)
    assert len(seen) == len(submitted.order) and sorted(order.tolist()) == list(range(len(sample_texts)))
    states = torch.cat([x for x, _ in seen])
    logits = torch.cat([y for _, y in seen])
    # The head's input is the bf16 backbone's output (every value a bf16 number), widened to fp32.
    assert states.dtype == logits.dtype == torch.float32
    assert torch.equal(states.to(torch.bfloat16).float(), states)
    # An fp32 head with the original weights, applied by hand to those same states, gives the engine's logits...
    hand = torch.nn.functional.linear(states, want_fc["weight"], want_fc["bias"])
    torch.testing.assert_close(logits, hand, rtol=1e-6, atol=1e-6)
    # ...and its softmax is what the engine returns for each document.
    np.testing.assert_allclose(got[order], torch.softmax(hand, dim=-1).numpy(), rtol=1e-6, atol=1e-7)
    # The check can see rounding: a bf16 head on the same states misses the fp32 logits by far more.
    rounded = torch.nn.functional.linear(states.bfloat16(), want_fc["weight"].bfloat16(),
                                         want_fc["bias"].bfloat16()).float()
    assert (rounded - hand).abs().max() > 1e-3


def test_fp32_children_must_name_children(engine):
    from sparkcurate.engine.runner import to_inference

    model = copy_module(engine.model)
    model.fp32_children = ("head",)
    with pytest.raises(ValueError, match="head"):
        to_inference(model, torch.device("cpu"), torch.bfloat16)


def test_load_engine_waits_for_the_cuda_start_before_the_engine_and_raises_its_error(deberta_dir, monkeypatch):
    """``load_engine`` starts the device's context first, reads the checkpoint meanwhile, and makes no engine
    until the context is there; a failed start is the load's error (a DeviceError), not the engine's."""
    from sparkcurate.spark import devices

    events: list = []

    class FakeStart:
        fail = False

        def __init__(self, device: str) -> None:
            events.append(("start", device))

        def wait(self) -> None:
            events.append("wait")
            if FakeStart.fail:
                raise devices.DeviceError("CUDA could not start on cpu in this Python worker: test")

    clf = DomainClassifier(model=str(deberta_dir), device="cpu")
    real_load, real_make = clf.load_model, clf.make_engine
    monkeypatch.setattr(devices, "CudaStart", FakeStart)
    monkeypatch.setattr(clf, "load_model", lambda *a: (events.append("load_model"), real_load(*a))[1])
    monkeypatch.setattr(clf, "make_engine", lambda *a: (events.append("make_engine"), real_make(*a))[1])
    assert isinstance(clf.load_engine("cpu"), InferenceEngine)
    assert events == [("start", "cpu"), "load_model", "wait", "make_engine"]
    events.clear()
    FakeStart.fail = True
    with pytest.raises(devices.DeviceError, match="could not start"):
        clf.load_engine("cpu")
    assert events == [("start", "cpu"), "load_model", "wait"]


def test_packed_kernels_are_imported_early_only_where_the_engine_would_use_them(monkeypatch):
    from sparkcurate.engine import deberta_packed
    from sparkcurate.engine.runner import import_packed_kernels

    calls: list = []
    monkeypatch.setattr(deberta_packed, "import_kernels", lambda: calls.append(1) or True)

    class Packed(torch.nn.Module):
        def forward_packed(self):  # pragma: no cover - only its presence matters
            raise AssertionError

    import_packed_kernels(Packed(), "cpu", "auto")
    import_packed_kernels(Packed(), "cuda:0", "off")
    import_packed_kernels(torch.nn.Linear(2, 2), "cuda:0", "auto")
    assert calls == []
    import_packed_kernels(Packed(), "cuda:0", "auto")
    import_packed_kernels(Packed(), torch.device("cuda", 1), "on")
    assert calls == [1, 1]


def test_import_kernels_imports_triton_and_gluon_without_a_device(monkeypatch):
    pytest.importorskip("triton")
    import subprocess
    import sys

    code = ("import sys; from sparkcurate.engine.deberta_packed import import_kernels; ok = import_kernels(); "
            "print(ok, 'triton' in sys.modules, 'triton.experimental.gluon' in sys.modules)")
    env_on = {**__import__("os").environ, "SPARKCURATE_SMEM_ATTENTION": "auto"}
    env_off = {**env_on, "SPARKCURATE_SMEM_ATTENTION": "off"}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_on, timeout=120)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_off, timeout=120)
    assert on.stdout.split() == ["True", "True", "True"], on.stderr
    assert off.stdout.split() == ["True", "True", "False"], off.stderr


def test_staged_copy_gives_every_tensor_byte_for_byte_through_two_reused_buffers():
    """Chunks smaller and larger than the tensors, odd sizes, every dtype a checkpoint holds; what cannot be streamed
    (not contiguous, empty) goes through ``to``. On the CPU the buffers are not pinned; the logic is the GPU's."""
    from sparkcurate.engine.runner import StagedCopy

    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, 13, generator=gen), torch.randn(300, generator=gen).half(),
               torch.randn(5, generator=gen).bfloat16(), torch.arange(41), torch.tensor(3.5),
               torch.rand(9, generator=gen) > 0.5, torch.randn(6, 4, generator=gen).t(), torch.empty(0, 3),
               torch.randint(0, 255, (1000,), generator=gen, dtype=torch.uint8)]
    for chunk in (16, 48, 4096):
        staged = StagedCopy(torch.device("cpu"), chunk_bytes=chunk, pin=False)
        copies = [staged(t) for t in tensors]
        staged.finish()
        assert len(staged._buffers) == 2 and all(b.numel() == chunk for b in staged._buffers)
        for t, c in zip(tensors, copies):
            assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
            streamed = t.is_contiguous() and t.numel() > 0  # the others went through to(): itself on the CPU
            assert (c.data_ptr() != t.data_ptr()) == streamed


def test_stage_module_keeps_parameter_objects_ties_and_buffers():
    from sparkcurate.engine.runner import StagedCopy, stage_module

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 3)
            self.b = torch.nn.Linear(4, 3)
            self.b.weight = self.a.weight
            self.register_buffer("ids", torch.arange(5), persistent=False)

    model = Tied()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    weight, old_ptr = model.a.weight, model.a.weight.data_ptr()
    staged = StagedCopy(torch.device("cpu"), chunk_bytes=32, pin=False)
    assert stage_module(model, staged) is model
    staged.finish()
    assert model.a.weight is weight and model.b.weight is weight and weight.data_ptr() != old_ptr
    assert isinstance(weight, torch.nn.Parameter) and weight.requires_grad
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert torch.equal(model.ids, torch.arange(5))
