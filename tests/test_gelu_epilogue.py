"""GELU in the intermediate GEMM's epilogue (sparkcurate/engine/kernels/gelu_epilogue.py): where it is used, what it
computes, and that the packed forward takes it for every layer when it is usable.

cuBLASLt's epilogue needs a GPU (tests/gpu/test_packed_gpu.py measures its error there); here
``torch._addmm_activation`` runs its CPU path (PyTorch 2.13's CPU path applies the exact GELU after the GEMM,
its CUDA paths the tanh one).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from sparkcurate.engine import deberta_packed as packed  # noqa: E402
from sparkcurate.engine.kernels import gelu_epilogue  # noqa: E402
from tests.test_packed import pack, random_batch, tiny_backbone  # noqa: E402


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(gelu_epilogue.EPILOGUE_ENV, raising=False)


def intermediate(act: str = "gelu"):
    from transformers import DebertaV2Config
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Intermediate

    torch.manual_seed(3)
    return DebertaV2Intermediate(DebertaV2Config(hidden_size=32, intermediate_size=128, hidden_act=act)).eval()


class FakeCuda:
    """Stands for a CUDA tensor in ``usable`` (which only reads ``device.type`` and ``dtype``)."""

    def __init__(self, dtype):
        self.device, self.dtype = torch.device("cuda"), dtype


def test_usable_only_for_half_precision_cuda_gelu_blocks(monkeypatch):
    block = intermediate().half()
    assert gelu_epilogue.usable(block, FakeCuda(torch.float16))
    assert gelu_epilogue.usable(intermediate("gelu_new").half(), FakeCuda(torch.float16))
    assert not gelu_epilogue.usable(block, torch.zeros(1, 32, dtype=torch.float16))  # CPU
    assert not gelu_epilogue.usable(intermediate(), FakeCuda(torch.float32))  # fp32 keeps the exact GELU
    assert not gelu_epilogue.usable(block, FakeCuda(torch.bfloat16))  # weights of another dtype
    assert not gelu_epilogue.usable(intermediate("relu").half(), FakeCuda(torch.float16))
    custom = intermediate().half()
    custom.intermediate_act_fn = nn.GELU()  # torch's own GELU (engine/deberta.py's blocks): either form is GELU
    assert gelu_epilogue.usable(custom, FakeCuda(torch.float16))

    class OwnGELU(nn.GELU):  # a subclass could compute anything
        pass

    custom.intermediate_act_fn = OwnGELU()
    assert not gelu_epilogue.usable(custom, FakeCuda(torch.float16))
    custom.intermediate_act_fn = nn.SiLU()
    assert not gelu_epilogue.usable(custom, FakeCuda(torch.float16))
    monkeypatch.setenv(gelu_epilogue.EPILOGUE_ENV, "off")
    assert not gelu_epilogue.usable(block, FakeCuda(torch.float16))
    monkeypatch.setenv(gelu_epilogue.EPILOGUE_ENV, "always")
    with pytest.raises(ValueError, match="SPARKCURATE_GELU_EPILOGUE must be one of"):
        gelu_epilogue.usable(block, FakeCuda(torch.float16))


def test_intermediate_gelu_is_the_gelu_of_the_dense_layer():
    """What the call computes: GELU of the block's dense layer, within the tanh approximation's 4.7e-4 of the
    block's own (exact erf) forward, for a block of transformers' own classes."""
    block = intermediate()
    x = torch.randn(50, 32) * 2
    got = gelu_epilogue.intermediate_gelu(block, x)
    with torch.no_grad():
        assert got.shape == (50, 128)
        assert (got - block(x)).abs().max().item() <= 4.8e-4


def test_packed_forward_uses_it_for_every_layer(monkeypatch):
    """Where it is usable, every full layer's intermediate block goes through it (the [CLS]-only last layer keeps
    the block's forward), and the hidden states stay within the tanh approximation's reach of the exact ones."""
    model = tiny_backbone(seed=61)
    ids, cu, longest = pack(random_batch(4, seed=62, max_len=60))
    plain = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="torch")
    calls = []
    real = gelu_epilogue.intermediate_gelu
    monkeypatch.setattr(gelu_epilogue, "usable", lambda block, sample: True)
    monkeypatch.setattr(gelu_epilogue, "intermediate_gelu", lambda *a: calls.append(1) or real(*a))
    assert packed._fused_tails(list(model.encoder.layer), torch.zeros(1, 1)).gelu
    fused = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="torch")
    assert len(calls) == len(model.encoder.layer)
    assert (fused - plain).abs().max().item() < 1e-2
    calls.clear()
    packed.packed_last_hidden(model, ids, cu, longest, attention_impl="torch", rows="first")
    assert len(calls) == len(model.encoder.layer) - 1
