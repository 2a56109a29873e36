"""The fused residual + LayerNorm kernel (sparkcurate/engine/kernels/residual_norm.py) and where the packed forward uses it.

The kernel runs here through Triton's CPU interpreter (see tests/test_relative_attention.py for why and when it
is on); the settings and the fallback are checked without it.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from sparkcurate.engine import deberta_packed as packed  # noqa: E402
from sparkcurate.engine.kernels import backends, residual_norm  # noqa: E402
from tests.conftest import triton_interpreter_problem  # noqa: E402
from tests.test_packed import pack, random_batch, tiny_backbone  # noqa: E402


needs_interpreter = pytest.mark.skipif(triton_interpreter_problem() is not None,
                                       reason=str(triton_interpreter_problem()))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(residual_norm.FUSED_ENV, raising=False)


def norm_of(width: int, eps: float = 1e-7, seed: int = 0) -> nn.LayerNorm:
    torch.manual_seed(seed)
    norm = nn.LayerNorm(width, eps=eps)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    return norm


@needs_interpreter
@pytest.mark.parametrize("rows,width,eps", [(37, 64, 1e-7), (5, 100, 1e-5), (1, 768, 1e-7), (9, 48, 0.5)])
def test_equals_add_then_layer_norm_fp32(rows, width, eps):
    """Widths that are and are not powers of two, one row, and an eps large enough to matter."""
    norm = norm_of(width, eps)
    x = torch.randn(rows, width) * 3 + 1
    residual = torch.randn(rows, width)
    got = residual_norm.add_layer_norm(x, residual, norm)
    want = norm(x + residual)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("round_sum", [False, True])
def test_half_precision(dtype, round_sum, monkeypatch):
    """fp16/bf16 in and out: the fp32 LayerNorm of the fp32 sum (default) or of the sum rounded to the dtype
    (``ROUND_SUM``, what PyTorch's separate add hands its LayerNorm), rounded once to the dtype."""
    monkeypatch.setattr(residual_norm, "ROUND_SUM", round_sum)
    width = 96
    norm = norm_of(width).to(dtype)
    torch.manual_seed(1)
    x = (torch.randn(21, width) * 4).to(dtype)
    residual = torch.randn(21, width).to(dtype)
    got = residual_norm.add_layer_norm(x, residual, norm)
    exact_sum = x.float() + residual.float()
    total = (x + residual).float() if round_sum else exact_sum
    want = torch.nn.functional.layer_norm(total, (width,), norm.weight.float(), norm.bias.float(), norm.eps)
    assert got.dtype == dtype
    if dtype == torch.float16:  # one rounding of the output: within half a unit in the last place
        assert ((got.float() - want).abs() <= want.abs() * 2.0 ** -11 * 1.01 + 1e-6).all()
    else:  # Triton's CPU interpreter converts to bf16 by truncation (the GPU rounds to nearest): the sum too
        assert (got.float() - want).abs().max().item() <= 8e-3 * want.abs().max().item()
    # The default is closer to the fp32 LayerNorm of the exact sum than PyTorch's two-kernel arithmetic (fp16:
    # the interpreter's truncating bf16 conversion would hide the gain).
    exact = torch.nn.functional.layer_norm(exact_sum, (width,), norm.weight.float(), norm.bias.float(), norm.eps)
    torch_way = norm(x + residual).float()
    if not round_sum and dtype == torch.float16:
        assert (got.float() - exact).abs().mean() < (torch_way - exact).abs().mean()


@needs_interpreter
def test_strided_rows_and_empty_input():
    """Rows of a split (a view with a row stride wider than the width) read correctly; no rows, no launch."""
    norm = norm_of(32)
    wide = torch.randn(11, 96)
    x, residual, _ = wide.split(32, dim=1)
    got = residual_norm.add_layer_norm(x, residual, norm)
    assert (got - norm(x + residual)).abs().max().item() < 1e-5
    empty = torch.empty(0, 32)
    assert residual_norm.add_layer_norm(empty, empty, norm).shape == (0, 32)


def test_bad_shapes_rejected():
    norm = norm_of(16)
    with pytest.raises(ValueError, match="one shape and dtype"):
        residual_norm.add_layer_norm(torch.zeros(3, 16), torch.zeros(4, 16), norm)
    with pytest.raises(ValueError, match="one shape and dtype"):
        residual_norm.add_layer_norm(torch.zeros(3, 16), torch.zeros(3, 16, dtype=torch.float64), norm)
    with pytest.raises(ValueError, match="LayerNorm over 16"):
        residual_norm.add_layer_norm(torch.zeros(3, 8), torch.zeros(3, 8), norm)


def test_mode_and_usable(monkeypatch):
    """'auto' fuses on CUDA only, 'on' also on the CPU, 'off' never; only plain affine LayerNorms qualify."""
    cpu = torch.zeros(2, 16)
    norm = norm_of(16)
    assert residual_norm.mode() == "auto" and not residual_norm.usable(norm, cpu)
    monkeypatch.setenv(residual_norm.FUSED_ENV, "off")
    assert not residual_norm.usable(norm, cpu)
    monkeypatch.setenv(residual_norm.FUSED_ENV, " ON ")
    assert residual_norm.usable(norm, cpu) == (_triton_importable())

    class OwnNorm(nn.LayerNorm):
        pass

    assert not residual_norm.usable(OwnNorm(16), cpu)
    assert not residual_norm.usable(nn.LayerNorm(16, elementwise_affine=False), cpu)
    assert not residual_norm.usable(nn.LayerNorm(residual_norm.MAX_WIDTH + 1), cpu)
    assert not residual_norm.usable(norm, cpu.half())  # fp32 weights, fp16 rows: PyTorch's own rules apply
    monkeypatch.setenv(residual_norm.FUSED_ENV, "fast")
    with pytest.raises(ValueError, match=residual_norm.FUSED_ENV):
        residual_norm.usable(norm, cpu)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@needs_interpreter
@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_packed_forward_with_fused_tails(monkeypatch, impl):
    """The packed forward with fused tails equals the unfused one, all rows and [CLS] rows."""
    model = tiny_backbone(seed=51)
    ids, cu, longest = pack(random_batch(4, seed=52, max_len=70))
    plain = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl)
    first_plain = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl, rows="first")
    monkeypatch.setenv(residual_norm.FUSED_ENV, "on")
    assert packed._fused_tails(list(model.encoder.layer), torch.zeros(1, 1))
    fused = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl)
    first_fused = packed.packed_last_hidden(model, ids, cu, longest, attention_impl=impl, rows="first")
    assert (fused - plain).abs().max().item() < 2e-5
    assert (first_fused - first_plain).abs().max().item() < 2e-5


@needs_interpreter
def test_fused_tails_really_used(monkeypatch):
    """With mode 'on' every layer's two tails go through the kernel (the equality test above would also pass if
    nothing were fused)."""
    model = tiny_backbone(seed=53)
    ids, cu, longest = pack(random_batch(3, seed=54, max_len=40))
    monkeypatch.setenv(residual_norm.FUSED_ENV, "on")
    calls = []
    real = residual_norm.add_layer_norm
    monkeypatch.setattr(residual_norm, "add_layer_norm", lambda *a: calls.append(1) or real(*a))
    packed.packed_last_hidden(model, ids, cu, longest, attention_impl="torch")
    assert len(calls) == 2 * len(model.encoder.layer)


def test_subclassed_output_blocks_are_not_fused(monkeypatch):
    """A model whose output block is not HF's own class keeps its own forward."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Output

    class Custom(DebertaV2Output):
        pass

    model = tiny_backbone(seed=55)
    layer = model.encoder.layer[0]
    custom = Custom(model.config)
    custom.load_state_dict(layer.output.state_dict())
    layer.output = custom
    monkeypatch.setenv(residual_norm.FUSED_ENV, "on")
    assert not packed._fused_tails(list(model.encoder.layer), torch.zeros(1, 1))


def test_first_row_slots_cached_and_sliced():
    """The [CLS]-only layer's slot tables are built once per size step and sliced: equal to building them for
    the exact length, at every length."""
    model = tiny_backbone(seed=57, position_buckets=16, max_relative_positions=64)
    attention = model.encoder.layer[0].attention.self
    packed._FIRST_ROW_SLOTS.clear()
    for length in (5, 300, 1, 700, 64):
        c2p, p2c = packed._first_row_buckets(attention, length, torch.device("cpu"))
        want_c2p, want_p2c = packed._build_first_row_buckets(attention, length, torch.device("cpu"))
        assert torch.equal(c2p, want_c2p) and torch.equal(p2c, want_p2c)
    assert len(packed._FIRST_ROW_SLOTS) == 1
    (built, _), = packed._FIRST_ROW_SLOTS.values()
    assert built.numel() == 2 * backends.SLOT_STEP
