"""The fused linear + exact GELU kernel (sparkcurate/engine/linear_gelu.py) and where the packed forward uses it.

The kernel runs here through Triton's CPU interpreter (see tests/test_relative_attention.py for why and when it
is on); the settings, the fallback and the shape checks are tested without it.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from sparkcurate.engine import linear_gelu, packed  # noqa: E402
from tests.conftest import triton_interpreter_problem  # noqa: E402
from tests.test_packed import pack, random_batch, tiny_backbone  # noqa: E402

needs_interpreter = pytest.mark.skipif(triton_interpreter_problem() is not None,
                                       reason=str(triton_interpreter_problem()))
SMALL = "16,32,32,2,4,1"  # blocks small enough that the test shapes span several tiles and a ragged edge


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(linear_gelu.FUSED_ENV, raising=False)
    monkeypatch.delenv(linear_gelu.CONFIG_ENV, raising=False)


def dense_of(in_features: int, out_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    dense = nn.Linear(in_features, out_features)
    with torch.no_grad():
        dense.weight.normal_(0.0, 0.3)
        dense.bias.normal_(0.0, 0.5)
    return dense


@needs_interpreter
@pytest.mark.parametrize("rows,depth,width", [(37, 64, 96), (1, 32, 32), (50, 128, 40)])
def test_fp32_matches_torch(monkeypatch, rows, depth, width):
    """Every row and column (several tiles, ragged last tiles) equals ``gelu(linear(x))`` in fp32."""
    monkeypatch.setenv(linear_gelu.CONFIG_ENV, SMALL)
    dense = dense_of(depth, width, seed=rows)
    x = torch.randn(rows, depth, generator=torch.Generator().manual_seed(1))
    got = linear_gelu.linear_gelu(x, dense)
    want = F.gelu(dense(x))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max().item() < 1e-5


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16])
def test_half_precision_rounds_once(monkeypatch, dtype):
    """In half precision the result is the fp32 value of the same half inputs rounded once: within half a unit in
    the last place of it (plus the accumulation order), never further than the two-kernel path's extra rounding.
    (bf16: the GPU test only; Triton's interpreter gets ``tl.dot`` of bf16 operands wrong, 1e10 off.)"""
    monkeypatch.setenv(linear_gelu.CONFIG_ENV, SMALL)
    dense = dense_of(64, 96, seed=3).to(dtype)
    x = torch.randn(41, 64, generator=torch.Generator().manual_seed(4)).to(dtype)
    got = linear_gelu.linear_gelu(x, dense)
    exact = F.gelu(F.linear(x.float(), dense.weight.float(), dense.bias.float()))
    ulp = torch.finfo(dtype).eps * exact.abs().clamp(min=torch.finfo(dtype).tiny)
    assert got.dtype == dtype
    assert ((got.float() - exact).abs() <= ulp + 1e-6).all()
    two_kernels = F.gelu(F.linear(x.float(), dense.weight.float(), dense.bias.float()).to(dtype).float()).to(dtype)
    assert ((got.float() - exact).abs() <= (two_kernels.float() - exact).abs() + ulp + 1e-6).all()


@needs_interpreter
def test_empty_and_strided_rows(monkeypatch):
    monkeypatch.setenv(linear_gelu.CONFIG_ENV, SMALL)
    dense = dense_of(32, 32)
    assert linear_gelu.linear_gelu(torch.zeros(0, 32), dense).shape == (0, 32)
    wide = torch.randn(9, 96, generator=torch.Generator().manual_seed(5))
    part = wide[:, 32:64]  # rows 96 apart, as a split of a wider tensor
    assert (linear_gelu.linear_gelu(part, dense) - F.gelu(dense(part))).abs().max().item() < 1e-5


def test_bad_shapes_rejected():
    dense = dense_of(32, 16)
    for bad in (torch.zeros(4, 31), torch.zeros(2, 4, 32), torch.zeros(4, 32, dtype=torch.float16)):
        with pytest.raises(ValueError, match="x must be"):
            linear_gelu.linear_gelu(bad, dense)
    with pytest.raises(ValueError, match="BLOCK_K"):
        linear_gelu.linear_gelu(torch.zeros(4, 48), dense_of(48, 16))


def test_bad_config_rejected(monkeypatch):
    for bad in ("128,128,64", "a,b,c,d,e,f", "128,96,64,8,8,4", "128,128,64,0,8,4"):
        monkeypatch.setenv(linear_gelu.CONFIG_ENV, bad)
        with pytest.raises(ValueError, match=linear_gelu.CONFIG_ENV):
            linear_gelu.launch_config()


def test_usable_only_for_exact_gelu_blocks(monkeypatch):
    """Mode, device, dtype, activation and class rules (no kernel run: works without Triton's interpreter)."""
    model = tiny_backbone(seed=61)
    block = model.encoder.layer[0].intermediate
    cpu = torch.zeros(1, 1)
    assert not linear_gelu.usable(block, cpu)  # auto: CUDA half tensors only
    monkeypatch.setenv(linear_gelu.FUSED_ENV, "on")
    if linear_gelu.usable(block, cpu) is False:  # Triton missing: the fused path is simply off
        pytest.importorskip("triton")
    assert linear_gelu.usable(block, cpu)
    assert not linear_gelu.usable(block, cpu.half())  # fp32 weights, fp16 rows: PyTorch's own rules apply

    tanh = tiny_backbone(seed=61, hidden_act="gelu_new").encoder.layer[0].intermediate
    assert not linear_gelu.usable(tanh, cpu)  # the tanh form is not what the kernel computes

    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Intermediate

    class Custom(DebertaV2Intermediate):
        pass

    custom = Custom(model.config)
    assert not linear_gelu.usable(custom, cpu)
    monkeypatch.setenv(linear_gelu.CONFIG_ENV, "16,32,128,2,4,1")  # 64 input features: not a multiple of BLOCK_K
    assert not linear_gelu.usable(block, cpu)
    monkeypatch.setenv(linear_gelu.FUSED_ENV, "fast")
    with pytest.raises(ValueError, match=linear_gelu.FUSED_ENV):
        linear_gelu.usable(block, cpu)


@needs_interpreter
@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_packed_forward_with_fused_gelu(monkeypatch, impl):
    """The packed forward with the fused feed-forward GEMM equals the unfused one (all rows and [CLS] rows), and
    every full layer really goes through the kernel."""
    monkeypatch.setenv(linear_gelu.CONFIG_ENV, SMALL)
    model = tiny_backbone(seed=63)
    ids, cu, longest = pack(random_batch(4, seed=64, max_len=70))
    plain = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl)
    first_plain = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl, rows="first")
    monkeypatch.setenv(linear_gelu.FUSED_ENV, "on")
    assert packed._fused_tails(list(model.encoder.layer), torch.zeros(1, 1)).gelu
    calls = []
    real = linear_gelu.linear_gelu
    monkeypatch.setattr(linear_gelu, "linear_gelu", lambda *a: calls.append(1) or real(*a))
    fused = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl)
    assert len(calls) == len(model.encoder.layer)
    first_fused = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl, rows="first")
    assert (fused - plain).abs().max().item() < 2e-5
    assert (first_fused - first_plain).abs().max().item() < 2e-5
