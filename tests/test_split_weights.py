"""precision="fp16-split": fp32 weights kept as fp16 (hi, lo) pairs, products rounded once (CPU tests)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sparkcurate.engine.kernels import split_weights  # noqa: E402
from sparkcurate.engine.kernels.split_weights import LO_SHIFT, SplitWeight, linear, split, split_linears  # noqa: E402


def correctly_rounded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp16 rounding of the exact product (float64) of fp16 inputs and fp32 weights."""
    out = x.double() @ weight.double().T
    if bias is not None:
        out = out + bias.double()
    return out.half()


def test_pair_keeps_the_fp32_bits_and_lo_is_not_subnormal():
    torch.manual_seed(0)
    w = torch.randn(256, 128) * 0.02
    pair = split(w, torch.float16)
    assert pair.hi.dtype == pair.lo.dtype == torch.float16 and pair.shape == w.shape
    back = pair.hi.double() + pair.lo.double() * 2.0**-LO_SHIFT
    rel = ((back - w.double()).abs() / w.double().abs()).median().item()
    assert rel < 2.0**-18, rel  # fp16 alone: ~2^-12
    lo = pair.lo[pair.lo != 0].abs()
    assert (lo >= torch.finfo(torch.float16).tiny).float().mean() > 0.95  # scaled out of the subnormals


def test_linear_is_the_correctly_rounded_fp32_product():
    """Without bias, the split product is the fp16 rounding of the exact fp32-weight product (up to fp32
    accumulation), where fp16 weights miss it on a large share of elements."""
    torch.manual_seed(1)
    w = torch.randn(256, 512) * 0.02
    x = torch.randn(128, 512).half()
    want = correctly_rounded(x, w)
    assert (linear(x, split(w, torch.float16)) == want).float().mean() > 0.99
    assert (linear(x, w.half()) == want).float().mean() < 0.8


def test_linear_with_bias_and_leading_dims():
    torch.manual_seed(2)
    w = torch.randn(96, 64) * 0.05
    bias = (torch.randn(96) * 0.01).half()
    x = torch.randn(2, 30, 64).half()
    got = linear(x, split(w, torch.float16), bias)
    assert got.shape == (2, 30, 96) and got.dtype == torch.float16
    want = correctly_rounded(x.reshape(-1, 64), w, bias).reshape(2, 30, 96)
    step = want.float().abs().clamp_min(2.0**-14) * 2.0**-10  # one fp16 step
    assert ((got.float() - want.float()).abs() <= step).all()
    assert (got == want).float().mean() > 0.98
    plain = torch.randn(5, 64)
    assert torch.equal(linear(plain, w, None), torch.nn.functional.linear(plain, w))


def test_split_refuses_half_precision_weights():
    with pytest.raises(ValueError, match="fp32 weights"):
        split(torch.zeros(4, 4, dtype=torch.float16), torch.float16)


def test_split_weight_slices_by_rows():
    pair = split(torch.randn(12, 4), torch.float16)
    part = pair[8:]
    assert isinstance(part, SplitWeight) and part.shape == (4, 4)
    assert torch.equal(part.hi, pair.hi[8:]) and torch.equal(part.lo, pair.lo[8:])


def test_split_linears_skips_named_children_and_other_classes(caplog):
    from torch import nn

    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Module()
    model.body = nn.Sequential(nn.Linear(8, 8), nn.GELU(), Scaled(8, 8))
    model.fc = nn.Linear(8, 3)
    with caplog.at_level(logging.WARNING, logger="sparkcurate.engine.kernels.split_weights"):
        count = split_linears(model, torch.float16, skip=("fc",))
    assert count == 1
    assert type(model.body[0]) is split_weights.SplitLinear
    assert type(model.body[2]) is Scaled and type(model.fc) is nn.Linear
    assert "body.2" in caplog.text and "fc" not in caplog.text.split("weights:")[-1]
    assert split_linears(model, torch.float16, skip=("fc",)) == 0  # already split: nothing twice


def test_fused_qkv_of_split_projections_stacks_both_halves():
    from torch import nn

    from sparkcurate.engine.kernels import backends

    torch.manual_seed(3)
    holder = nn.Module()
    holder.q, holder.k, holder.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32, bias=False)
    split_linears(holder, torch.float16)
    weight, bias = backends.fused_qkv(holder.q, holder.k, holder.v)
    assert isinstance(weight, SplitWeight) and weight.shape == (96, 32)
    x = torch.randn(10, 32).half()
    fused = linear(x, weight, bias)
    each = torch.cat([holder.q(x), holder.k(x), holder.v(x)], dim=-1)
    assert (fused.float() - each.float()).abs().max().item() <= 2e-3  # same arithmetic, stacked rows
    assert torch.equal(bias[64:], torch.zeros(32, dtype=torch.float16))
    assert weight.pair.shape == (96, 64) and torch.equal(weight[32:64].pair, holder.k.weight_pair)
    holder.v = nn.Linear(32, 32).half()
    with pytest.raises(ValueError, match="mix split and plain"):
        backends.fused_qkv(holder.q, holder.k, holder.v)


def test_engine_fp16_split_on_cpu(deberta_dir, sample_texts):
    """The engine splits every backbone projection, keeps the head fp32, and predicts like fp32; with weights that
    fp16 holds exactly (lo = 0) it predicts what the fp16 engine does."""
    from sparkcurate.classifiers import DomainClassifier
    from sparkcurate.engine.runner import EngineConfig, InferenceEngine

    classifier = DomainClassifier(model=str(deberta_dir), device="cpu")
    classifier.preflight()
    base = classifier.load_engine("cpu")
    exact = base.predict(sample_texts)
    cls = split_weights.SplitLinear

    def engine(model, precision):
        return InferenceEngine(copy.deepcopy(model), base.tokenizer, EngineConfig(max_chars=2000, precision=precision))

    halves = engine(base.model, "fp16-split")
    linears = [m for m in halves.model.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is cls for m in linears)
    assert type(halves.model.fc) is torch.nn.Linear and halves.model.fc.weight.dtype == torch.float32
    got = halves.predict(sample_texts)
    assert np.abs(got - exact).max() < 2e-2

    representable = copy.deepcopy(base.model)
    with torch.no_grad():
        for p in representable.model.parameters():
            p.copy_(p.half().float())
    np.testing.assert_allclose(engine(representable, "fp16-split").predict(sample_texts),
                               engine(representable, "fp16").predict(sample_texts), atol=2e-3)


def test_unknown_precision_names_the_choices():
    from sparkcurate.engine.runner import EngineConfig

    with pytest.raises(ValueError, match="fp16-split"):
        EngineConfig(precision="fp8").resolved_precision(torch.device("cpu"))


def test_causal_lms_refuse_fp16_split():
    """A causal LM is loaded straight in the engine's dtype (never through fp32): fp16-split cannot apply, and says so."""
    from sparkcurate.engine.runner import EngineConfig
    from sparkcurate.models.llm import precision_dtype

    assert precision_dtype(EngineConfig(precision="fp16"), "cpu") == torch.float16
    with pytest.raises(ValueError, match="encoder classifiers"):
        precision_dtype(EngineConfig(precision="fp16-split"), "cpu")
