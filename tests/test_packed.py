"""CPU tests of packed (unpadded) DeBERTa inference: the packing glue must give
exactly the padded Hugging Face forward, per sequence."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparkcurate.engine import deberta_packed as packed  # noqa: E402
from sparkcurate.engine.kernels import backends, dflash_attention  # noqa: E402


def tiny_backbone(seed: int = 0, **overrides):
    """A random DeBERTa-v3-shaped backbone small enough for CPU tests."""
    from transformers import DebertaV2Config, DebertaV2Model

    settings = dict(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=32,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = DebertaV2Model(DebertaV2Config(**settings)).eval()
    # Larger random spread than the init so attention is far from uniform and a
    # wrong relative-position index would show up.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
    return model


def random_batch(n: int, seed: int, max_len: int = 40, vocab: int = 500):
    """n random sequences of lengths 1..max_len (at least one of each end)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen).tolist()
    lengths[0], lengths[-1] = 1, max_len
    seqs = [torch.randint(1, vocab, (length,), generator=gen) for length in lengths]
    return seqs


def padded_last_hidden(model, seqs):
    """HF padded forward; returns one [L, H] tensor per sequence (padding removed)."""
    longest = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


def pack(seqs):
    lengths = torch.tensor([len(s) for s in seqs])
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return torch.cat(seqs), cu, int(lengths.max())


def first_token_rows(cu_seqlens):
    """Row index of each sequence's first ([CLS]) token in a packed ``[T, H]`` tensor."""
    return cu_seqlens[:-1].long()


def assert_matches_padded(model, seqs, impl, atol=1e-5):
    ids, cu, max_len = pack(seqs)
    got = packed.packed_last_hidden(model, ids, cu, max_len, attention_impl=impl)
    assert got.shape == (ids.numel(), model.config.hidden_size)
    want = padded_last_hidden(model, seqs)
    for b, ref in enumerate(want):
        piece = got[int(cu[b]) : int(cu[b + 1])]
        err = (piece - ref).abs().max().item()
        assert err <= atol, f"sequence {b} (length {len(seqs[b])}): max abs diff {err}"


def test_reference_packed_matches_padded_hf():
    model = tiny_backbone()
    assert_matches_padded(model, random_batch(24, seed=1), "reference")


def test_reference_matches_with_absolute_positions_and_token_types():
    # Absolute positions must restart at 0 in each packed sequence.
    model = tiny_backbone(seed=3, position_biased_input=True, type_vocab_size=2)
    assert_matches_padded(model, random_batch(12, seed=4), "reference")


def test_packed_first_rows_are_cls_rows():
    model = tiny_backbone()
    seqs = random_batch(6, seed=5)
    ids, cu, max_len = pack(seqs)
    got = packed.packed_last_hidden(model, ids, cu, max_len, attention_impl="reference")
    rows = got[first_token_rows(cu)]
    want = torch.stack([h[0] for h in padded_last_hidden(model, seqs)])
    assert (rows - want).abs().max().item() <= 1e-5


def test_disentangled_flash_torch_backend_matches_padded_hf():
    """The disentangled-flash wrappers (its PyTorch backend, CPU) + our glue."""
    pytest.importorskip("disentangled_flash")
    model = tiny_backbone(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert_matches_padded(model, random_batch(20, seed=8), "torch")
    # Aliasing the HF modules must leave the model's weights untouched.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # A weight change must invalidate the cached projected position tables.
    with torch.no_grad():
        model.encoder.rel_embeddings.weight.mul_(1.5)
    assert_matches_padded(model, random_batch(5, seed=9), "torch")


def test_disentangled_flash_torch_backend_unshared_position_projections():
    pytest.importorskip("disentangled_flash")
    model = tiny_backbone(seed=11, share_att_key=False, norm_rel_ebd="none")
    assert_matches_padded(model, random_batch(8, seed=12), "torch")


def test_fused_qkv_is_a_copy_and_one_gemm():
    """Q/K/V run as one GEMM on a fused copy; the HF Linear modules keep their own storage."""
    pytest.importorskip("disentangled_flash")
    model = tiny_backbone(seed=13)
    source = model.encoder.layer[0].attention.self
    params = {n: (p, p.data_ptr()) for n, p in source.named_parameters()}
    ids, cu, max_len = pack(random_batch(4, seed=14))
    packed.packed_last_hidden(model, ids, cu, max_len, attention_impl="torch")
    wrapper = backends._STATES[model].attentions[0]
    weight, bias = wrapper._cached_qkv_weight, wrapper._cached_qkv_bias
    a = source.all_head_size
    assert torch.equal(weight, torch.cat([source.query_proj.weight, source.key_proj.weight, source.value_proj.weight]))
    assert torch.equal(bias, torch.cat([source.query_proj.bias, source.key_proj.bias, source.value_proj.bias]))
    assert weight.data_ptr() not in {ptr for _, ptr in params.values()}
    for name, (param, ptr) in params.items():  # same Parameter objects, same storage: nothing re-pointed
        assert dict(source.named_parameters())[name] is param and param.data_ptr() == ptr
    # The three projections are column views of one [T, 3A] result (strided, no copies).
    hidden = torch.randn(7, model.config.hidden_size)
    with torch.no_grad():
        q, k, v = wrapper._project_qkv(hidden)
        assert q.stride() == (3 * a, 1) and k.data_ptr() == q.data_ptr() + a * q.element_size()
        for got, proj in zip((q, k, v), (source.query_proj, source.key_proj, source.value_proj)):
            assert (got - proj(hidden)).abs().max().item() <= 1e-5


def test_fused_qkv_handles_missing_biases():
    lin = [torch.nn.Linear(8, 8, bias=b) for b in (False, False, False)]
    weight, bias = backends.fused_qkv(*lin)
    assert weight.shape == (24, 8) and bias is None
    lin = [torch.nn.Linear(8, 8, bias=b) for b in (True, False, True)]
    weight, bias = backends.fused_qkv(*lin)
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = torch.cat([m(x) for m in lin], dim=-1)
        assert (torch.nn.functional.linear(x, weight, bias) - want).abs().max().item() <= 1e-6


def test_fused_qkv_rebuilt_after_projection_weight_change():
    pytest.importorskip("disentangled_flash")
    model = tiny_backbone(seed=15)
    seqs = random_batch(6, seed=16)
    assert_matches_padded(model, seqs, "torch")
    with torch.no_grad():  # in place: same data_ptr, new _version
        model.encoder.layer[1].attention.self.value_proj.weight.mul_(-1.0)
        model.encoder.layer[0].attention.self.key_proj.bias.add_(0.5)
    assert_matches_padded(model, seqs, "torch")


def test_tuning_mode_from_env_and_override(monkeypatch):
    monkeypatch.delenv(dflash_attention.TUNING_ENV, raising=False)
    assert dflash_attention.tuning_mode() == "auto"
    monkeypatch.setenv(dflash_attention.TUNING_ENV, "Heuristic")
    assert dflash_attention.tuning_mode() == "heuristic"
    previous = dflash_attention.set_tuning_mode("autotune")
    try:
        assert previous is None and dflash_attention.tuning_mode() == "autotune"
        with pytest.raises(ValueError, match="tuning mode"):
            dflash_attention.set_tuning_mode("fastest")
    finally:
        dflash_attention.set_tuning_mode(previous)
    assert dflash_attention.tuning_mode() == "heuristic"
    monkeypatch.setenv(dflash_attention.TUNING_ENV, "bogus")
    with pytest.raises(ValueError, match=dflash_attention.TUNING_ENV):
        dflash_attention.tuning_mode()


def test_tuning_mode_reaches_the_wrappers(monkeypatch):
    pytest.importorskip("disentangled_flash")
    model = tiny_backbone(seed=17)
    ids, cu, max_len = pack(random_batch(3, seed=18))
    for mode in ("heuristic", "autotune"):
        monkeypatch.setenv(dflash_attention.TUNING_ENV, mode)
        packed.packed_last_hidden(model, ids, cu, max_len, attention_impl="torch")
        assert {a.tuning.mode for a in backends._STATES[model].attentions} == {mode}


FIRST_ROW_CONFIGS = {
    "c2p+p2c": {},
    "c2p": {"pos_att_type": ["c2p"]},
    "p2c": {"pos_att_type": ["p2c"]},
    "unshared": {"share_att_key": False, "norm_rel_ebd": "none"},
    "unshared-c2p": {"share_att_key": False, "pos_att_type": ["c2p"]},
    "few-buckets": {"position_buckets": 8, "max_relative_positions": 64},
    "one-layer": {"num_hidden_layers": 1},
}


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("name", sorted(FIRST_ROW_CONFIGS))
def test_first_rows_equal_all_rows_and_padded_hf(impl, name):
    """rows="first" (the [CLS]-only last layer) gives the [CLS] rows of the full forward."""
    if impl == "torch":
        pytest.importorskip("disentangled_flash")
    model = tiny_backbone(seed=19, **FIRST_ROW_CONFIGS[name])
    seqs = random_batch(16, seed=20, max_len=70)
    seqs[1], seqs[2] = seqs[1][:2], seqs[2][:1]  # lengths 1 (also seqs[0]) and 2
    ids, cu, max_len = pack(seqs)
    first = packed.packed_last_hidden(model, ids, cu, max_len, attention_impl=impl, rows="first")
    assert first.shape == (len(seqs), model.config.hidden_size)
    every = packed.packed_last_hidden(model, ids, cu, max_len, attention_impl=impl)
    assert (first - every[first_token_rows(cu)]).abs().max().item() <= 1e-5
    want = torch.stack([h[0] for h in padded_last_hidden(model, seqs)])
    assert (first - want).abs().max().item() <= 1e-5


def test_first_rows_single_sequence_and_bad_rows():
    model = tiny_backbone(seed=21)
    seq = random_batch(1, seed=22, max_len=9)
    ids, cu, max_len = pack(seq)
    first = packed.packed_last_hidden(model, ids, cu, max_len, attention_impl="reference", rows="first")
    assert (first[0] - padded_last_hidden(model, seq)[0][0]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="rows"):
        packed.packed_last_hidden(model, ids, cu, max_len, attention_impl="reference", rows="cls")


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_cls_head_forward_packed_equals_padded_forward(impl):
    if impl == "torch":
        pytest.importorskip("disentangled_flash")
    from sparkcurate.models.heads import ClsHeadModel

    backbone = tiny_backbone(seed=23)
    head = ClsHeadModel(backbone.config, n_labels=5).eval()
    head.model.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        head.fc.weight.normal_(0.0, 1.0)
    seqs = random_batch(12, seed=24)
    seqs[3] = seqs[3][:2]
    ids, cu, max_len = pack(seqs)
    longest = max(len(s) for s in seqs)
    pad_ids = torch.zeros((len(seqs), longest), dtype=torch.long)
    mask = torch.zeros_like(pad_ids)
    for i, s in enumerate(seqs):
        pad_ids[i, : len(s)], mask[i, : len(s)] = s, 1
    with torch.no_grad():
        want = head(pad_ids, mask)
        got = head.forward_packed(ids, cu, max_len, attention_impl=impl)
    assert got.shape == want.shape == (len(seqs), 5)
    assert (got - want).abs().max().item() <= 1e-5
    assert want.argmax(1).unique().numel() > 1  # the head is not degenerate


@pytest.mark.parametrize("buckets,max_rel", [(32, 512), (256, 512)])
def test_kernel_position_lookup_equals_hf_log_buckets(buckets, max_rel):
    """The Triton kernel reads relative-position slots through a compact table built
    for a representative length; check it picks HF's bucket for every (i, j)."""
    pytest.importorskip("disentangled_flash")
    from disentangled_flash.position import SharedPositionPlanCache
    from disentangled_flash.tuning import tuning_sequence_length
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    cache = SharedPositionPlanCache(
        position_buckets=buckets, max_relative_positions=max_rel, position_embedding_size=buckets
    )
    for length in (1, 7, 64, 65, 300, 512):
        rep = tuning_sequence_length(length)
        plan = cache.compact(rep, "cpu")
        dummy = torch.zeros(1, length, 1)
        rel = build_relative_position(dummy, dummy, bucket_size=buckets, max_position=max_rel)[0]
        want = torch.clamp(rel + buckets, 0, 2 * buckets - 1)
        i = torch.arange(length)[:, None]
        j = torch.arange(length)[None, :]
        got = plan.active_slots[plan.delta_to_local[(i - j + rep - 1)].long()]
        assert torch.equal(got, want), f"length {length}"
        # p2c reads slot(-bucket(j - i)); it must equal the c2p slot of (i, j).
        p2c = torch.clamp(-rel.T + buckets, 0, 2 * buckets - 1)
        assert torch.equal(p2c, want)


def test_packed_support_false_on_cpu_with_reason():
    model = tiny_backbone()
    ok, reason = packed.packed_support(model, "cpu")
    assert ok is False
    assert "CUDA" in reason


def test_config_problems_names_each_unsupported_feature():
    assert packed.config_problems(tiny_backbone()) == []
    bad = tiny_backbone(position_buckets=-1, pos_att_type=["c2p", "p2p"], conv_kernel_size=3)
    problems = " | ".join(packed.config_problems(bad))
    assert "position_buckets" in problems
    assert "p2p" in problems
    assert "conv_kernel_size" in problems
    assert packed.config_problems(torch.nn.Linear(2, 2))  # not a backbone at all


@pytest.mark.parametrize(
    "cu,max_len,match",
    [
        ([0, 3, 3, 5], 3, "strictly increasing"),
        ([1, 5], 4, "from 0"),
        ([0, 2, 5], 2, "max_seqlen"),
        ([0, 2, 4], 2, "token count"),
    ],
)
def test_bad_cu_seqlens_rejected(cu, max_len, match):
    model = tiny_backbone()
    ids = torch.arange(1, 6)
    with pytest.raises(ValueError, match=match):
        packed.packed_last_hidden(model, ids, torch.tensor(cu, dtype=torch.int32), max_len, "reference")


def test_bad_arguments_rejected():
    model = tiny_backbone()
    ids, cu, max_len = pack(random_batch(3, seed=2))
    with pytest.raises(ValueError, match="attention_impl"):
        packed.packed_last_hidden(model, ids, cu, max_len, attention_impl="fast")
    with pytest.raises(ValueError, match="1-D"):
        packed.packed_last_hidden(model, ids[None], cu, max_len, attention_impl="reference")
    with pytest.raises(TypeError, match="int32 or int64"):
        packed.packed_last_hidden(model, ids, cu.float(), max_len, attention_impl="reference")
    with pytest.raises(RuntimeError, match="eval"):
        packed.packed_last_hidden(model.train(), ids, cu, max_len, attention_impl="reference")
