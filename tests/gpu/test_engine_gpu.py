"""The engine on a real GPU: half precision against the fp32 CPU probabilities, packed and padded.

Run on the GPU machine with:  python3 -m pytest -m gpu tests/gpu -q

The default GPU precision is fp16: it stays within 1e-2 of fp32. bf16 (3 fewer mantissa bits) is offered
and checked for agreement on decisive documents; on these tiny random models its error is ~2e-2 (measured on
the CPU as well), which a trained model's decisive outputs shrink but random weights do not.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import DOMAIN_TEST_LABELS, host_syncs

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from sparkcurate.classifiers import DomainClassifier
    from tests.fixtures.tiny_models import make_deberta_classifier

    path = make_deberta_classifier(tmp_path_factory.mktemp("gpu") / "m", DOMAIN_TEST_LABELS, seed=3, head_spread=1.0)
    c = DomainClassifier(model=str(path))
    c.preflight()
    return c


@pytest.fixture(scope="module")
def texts_and_reference(classifier, sample_texts):
    texts = sample_texts * 8 + ["x", "word " * 5000]
    return texts, classifier.load_engine("cpu").predict(texts)


@pytest.mark.parametrize("packed", ["off", "auto"])
def test_fp16_within_1e2_of_cpu_fp32(classifier, texts_and_reference, packed):
    texts, cpu = texts_and_reference
    assert len(set(cpu.argmax(1))) >= 3  # documents get different labels: the check can fail
    engine = replace(classifier, precision="fp16", packed=packed).load_engine("cuda:0")
    got = engine.predict(texts)
    assert np.abs(got - cpu).max() < 1e-2


@pytest.mark.parametrize("packed", ["off", "auto"])
def test_bf16_agrees_on_decisive_documents(classifier, texts_and_reference, packed):
    texts, cpu = texts_and_reference
    got = replace(classifier, precision="bf16", packed=packed).load_engine("cuda:0").predict(texts)
    top2 = np.sort(cpu, axis=1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] > 0.1
    assert (got.argmax(1) == cpu.argmax(1))[decisive].all()
    assert np.abs(got - cpu).max() < 5e-2


def test_auto_precision_on_gpu_is_fp16(classifier):
    engine = classifier.load_engine("cuda:0")
    assert engine.precision == "fp16" and next(engine.model.parameters()).dtype == torch.float16


def test_next_batch_is_queued_without_waiting_for_the_previous(classifier, texts_and_reference):
    """``submit`` of a second batch while the first is in flight makes no host sync (the GPU keeps both queued),
    and ``predict_batches`` (one batch ahead) gives the same results as one ``predict`` per batch.

    Each result is compared with ``predict`` of the very same batch: in fp16 a document's row may change in the last
    bits with the micro-batch it shares (the GEMM kernel is chosen by shape), so batches of other compositions are
    not expected to agree to 1e-6."""
    texts, _ = texts_and_reference
    engine = classifier.load_engine("cuda")
    half = len(texts) // 2
    first_tokens, second_tokens = engine.tokenize(texts[:half]), engine.tokenize(texts[half:])
    engine.predict(texts)  # kernels compiled, tables built for the longest document (a longer one grows them once)
    torch.cuda.synchronize()
    first = engine.submit(first_tokens)
    submitted = []
    syncs = host_syncs(lambda: submitted.append(engine.submit(second_tokens)))
    assert not syncs, syncs
    second = submitted[0]
    got = np.concatenate([engine.collect(first), engine.collect(second)])
    np.testing.assert_allclose(got, np.concatenate([engine.predict(texts[:half]), engine.predict(texts[half:])]),
                               atol=1e-6)
    batches = [texts[:3], [], texts[3:half], texts[half:]]
    streamed = list(engine.predict_batches(batches))
    assert [len(b) for b in streamed] == [len(b) for b in batches]
    for batch, result in zip(batches, streamed):
        if batch:
            np.testing.assert_allclose(result, engine.predict(batch), atol=1e-6)


@pytest.mark.parametrize("packed", ["off", "auto"])
def test_fp16_split_within_1e2_of_cpu_fp32(classifier, texts_and_reference, packed):
    """precision="fp16-split" on the GPU: every backbone projection split (the packed path's fused Q/K/V too)."""
    from sparkcurate.engine.kernels import backends
    from sparkcurate.engine.kernels.split_weights import SplitWeight

    texts, cpu = texts_and_reference
    engine = replace(classifier, precision="fp16-split", packed=packed).load_engine("cuda:0")
    got = engine.predict(texts)
    assert np.abs(got - cpu).max() < 1e-2
    if engine.packed:
        state = backends._STATES[engine.model.model]
        assert all(isinstance(getattr(a, "qkv_weight", None) or a._cached_qkv_weight, SplitWeight)
                   for a in state.attentions)


@pytest.mark.parametrize("with_bias", [False, True])
def test_split_linear_is_correctly_rounded_by_cublas(with_bias):
    """The doubled-K GEMM meets both halves in cuBLAS's fp32 accumulator (and the bias in its epilogue): the output
    is the correctly rounded fp32-weight product, where fp16 weights miss it on ~40% of elements."""
    from sparkcurate.engine.kernels.split_weights import linear, split

    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(768, 768, device="cuda", generator=gen) * 0.02
    x = torch.randn(4096, 768, device="cuda", generator=gen).half()
    bias = (torch.randn(768, device="cuda", generator=gen) * 0.05).half() if with_bias else None
    exact = x.double() @ weight.double().T + (bias.double() if with_bias else 0.0)
    want = exact.half()
    assert (linear(x, split(weight, torch.float16), bias) == want).float().mean() > 0.98
    assert (linear(x, weight.half(), bias) == want).float().mean() < 0.8


def test_staged_copy_to_the_gpu_equals_to_and_keeps_ties():
    """The pinned, non-blocking staging (``runner.to_device``) against ``Module.to``: the same bytes on the device,
    tensors larger and smaller than a buffer, the same parameter objects, ties kept."""
    from sparkcurate.engine.runner import StagedCopy, stage_module

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(3000, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 3000))
        model[2].weight = model[0].weight
        model.register_buffer("ids", torch.arange(77), persistent=False)
        model.register_buffer("mask", torch.rand(33) > 0.5)
        model[1].half()
        return model

    reference, model = build().to("cuda"), build()
    weight = model[0].weight
    staged = StagedCopy(torch.device("cuda"), chunk_bytes=64 << 10)  # the embedding spans several buffers
    stage_module(model, staged)
    staged.finish()
    assert model[0].weight is weight and model[2].weight is weight and weight.device.type == "cuda"
    got, want = model.state_dict(keep_vars=True), reference.state_dict(keep_vars=True)
    assert list(got) == list(want)
    for name in want:
        assert got[name].device == want[name].device and got[name].dtype == want[name].dtype
        assert torch.equal(got[name], want[name]), name
    assert torch.equal(model.ids, reference.ids) and torch.equal(model.mask, reference.mask)


def test_cuda_start_makes_the_context_on_its_thread():
    from sparkcurate.spark.devices import CudaStart

    start = CudaStart("cuda:0")
    start.wait()
    assert start.seconds >= 0.0 and torch.cuda.is_initialized()
