"""The tile attention kernel (sparkcurate/engine/kernels/relative_attention.py) on the CPU, through Triton's interpreter.

Why: the compiled kernel needs a GPU (tests/gpu/test_packed_gpu.py), but the interpreter runs the same kernel
source with numpy, so every index and mask of the tile algorithm (distance windows, the c2p band, the
transposed p2c scratch, the persistent work loop) is checked here against the padded Hugging Face forward.
Triton's interpreter needs Triton >= 3.9 with NumPy 2 (older ones fail on 1-element arrays) and must be on
before Triton is first imported (tests/conftest.py); the tests skip without it (`.ci/run` installs it).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.conftest import triton_interpreter_problem  # noqa: E402

if triton_interpreter_problem():
    pytest.skip(triton_interpreter_problem(), allow_module_level=True)

from sparkcurate.engine import deberta_packed as packed  # noqa: E402
from sparkcurate.engine.kernels import relative_attention  # noqa: E402
from tests.test_packed import FIRST_ROW_CONFIGS, pack, padded_last_hidden, random_batch, tiny_backbone  # noqa: E402


#: The shears of the Triton kernel (runnable here through Triton's interpreter; "smem" is the Gluon kernel's).
TRITON_SHEARS = ("scratch", "gather")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(relative_attention.CONFIG_ENV, raising=False)
    monkeypatch.delenv(packed.KERNEL_ENV, raising=False)


def assert_rows_match(model, seqs, atol=2e-5, **launch):
    """All rows and the [CLS]-only rows of the triton path equal the padded HF forward, per sequence."""
    ids, cu, longest = pack(seqs)
    got = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton")
    want = padded_last_hidden(model, seqs)
    for b, ref in enumerate(want):
        err = (got[int(cu[b]): int(cu[b + 1])] - ref).abs().max().item()
        assert err <= atol, f"sequence {b} (length {len(seqs[b])}): max abs diff {err}"
    first = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton", rows="first")
    assert (first - torch.stack([h[0] for h in want])).abs().max().item() <= atol


@pytest.mark.parametrize("name", sorted(FIRST_ROW_CONFIGS))
def test_triton_matches_padded_hf(name):
    """Both position terms, one of them, unshared projections, few buckets, one layer."""
    model = tiny_backbone(seed=31, **FIRST_ROW_CONFIGS[name])
    seqs = random_batch(5, seed=32, max_len=150)  # spans 3 tiles of 64: band chunks and key tiles > 1
    seqs[1] = seqs[1][:2]
    assert_rows_match(model, seqs)


@pytest.mark.parametrize("shear", TRITON_SHEARS)
@pytest.mark.parametrize("config", ["64,64,4,3", "32,32,4,2", "16,16,2,2"])
def test_tile_sizes_and_shears(monkeypatch, shear, config):
    """Every tile size and both ways of reading the diagonal give the same, exact result."""
    monkeypatch.setenv(relative_attention.CONFIG_ENV, config)
    monkeypatch.setattr(relative_attention, "DEFAULT_SHEAR", shear)
    model = tiny_backbone(seed=33)
    assert_rows_match(model, random_batch(4, seed=34, max_len=90))


def test_persistent_programs_walk_every_item(monkeypatch):
    """Far fewer programs than (sequence x head, query tile) items: each program reuses its scratch for many
    items, which must not leak one item's position scores into the next."""
    monkeypatch.setattr(relative_attention, "PROGRAMS_PER_SM", 1)  # the interpreter's grid: 1 program
    model = tiny_backbone(seed=35)
    assert_rows_match(model, random_batch(6, seed=36, max_len=140))


def test_scratch_cap_bounds_the_grid(monkeypatch):
    """A scratch budget smaller than one program's band still runs (one program), exactly."""
    monkeypatch.setattr(relative_attention, "SCRATCH_BYTES", 1)
    model = tiny_backbone(seed=37)
    assert_rows_match(model, random_batch(3, seed=38, max_len=70))


@pytest.mark.parametrize("buckets,max_rel", [(32, 512), (256, 512), (8, 64)])
def test_distance_slots_are_hf_log_buckets(buckets, max_rel):
    """The slot of distance i - j is HF's clamp(bucket(i - j) + span) for c2p, and p2c's slot for (i, j) is the
    same (DeBERTa's buckets are odd), so one table serves both terms."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    model = tiny_backbone(position_buckets=buckets, max_relative_positions=max_rel)
    attention = model.encoder.layer[0].attention.self
    length, half = 300, 400
    table = relative_attention.distance_slots(attention, half, "cpu")
    assert table.dtype == torch.int32 and table.numel() == 2 * half + 1
    dummy = torch.zeros(1, length, 1)
    rel = build_relative_position(dummy, dummy, bucket_size=buckets, max_position=max_rel)[0]
    span = int(attention.pos_ebd_size)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    got = table[(i - j) + half].long()
    assert torch.equal(got, torch.clamp(rel + span, 0, 2 * span - 1))
    assert torch.equal(got, torch.clamp(-rel.T + span, 0, 2 * span - 1))


def test_bad_launch_settings_rejected(monkeypatch):
    model = tiny_backbone(seed=39)
    ids, cu, longest = pack(random_batch(2, seed=40, max_len=20))
    for bad in ("64,32,4,2", "48,48,4,2", "8,8,1,1", "256,256,8,2", "a,b,c,d", "64,64"):
        monkeypatch.setenv(relative_attention.CONFIG_ENV, bad)
        with pytest.raises(ValueError, match=relative_attention.CONFIG_ENV):
            packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton")
    monkeypatch.delenv(relative_attention.CONFIG_ENV)
    tables, slots = relative_attention.tile_tables_for(model, longest)
    with pytest.raises(ValueError, match="shear"):
        relative_attention.packed_attention(tables[0], torch.zeros(ids.numel(), 64), cu, longest, slots,
                                            shear="diagonal")
    with pytest.raises(ValueError, match="distance table"):
        relative_attention.packed_attention(tables[0], torch.zeros(ids.numel(), 64), cu, longest, slots[:9])


def test_smem_shear_falls_back_or_says_why(monkeypatch):
    """The shared-memory kernel (Gluon, CUDA only) is the default where it can run: elsewhere the default
    falls back to the scratch shear, exactly, and asking for it by name fails with the reason."""
    monkeypatch.delenv(relative_attention.CONFIG_ENV, raising=False)
    assert relative_attention.DEFAULT_SHEAR == "smem"
    model = tiny_backbone(seed=43)
    assert_rows_match(model, random_batch(3, seed=44, max_len=80))  # default shear on the CPU: scratch
    ids, cu, longest = pack(random_batch(2, seed=45, max_len=20))
    tables, slots = relative_attention.tile_tables_for(model, longest)
    with pytest.raises(ValueError, match="shear='smem' cannot run here: needs a CUDA device"):
        relative_attention.packed_attention(tables[0], torch.zeros(ids.numel(), 64), cu, longest, slots,
                                            shear="smem")


def test_smem_kernel_that_does_not_compile_falls_back(monkeypatch, caplog):
    """Where the shared-memory kernel passes its checks but this Triton cannot compile it (Gluon's API moves
    between releases: Triton 3.9 refuses its padded view), the first launch logs why and the Triton kernel runs,
    exactly; the kernel is not tried again in the process, and asking for it by name raises the reason."""
    import logging

    from sparkcurate.engine.kernels import relative_attention_smem as smem

    class Uncompilable:
        launches = 0

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                Uncompilable.launches += 1
                raise RuntimeError("error: cannot reinterpret between padded and non-padded layouts")
            return launch

    monkeypatch.setattr(smem, "_KERNEL", [Uncompilable()])
    monkeypatch.setattr(smem, "_BROKEN", {})
    monkeypatch.setattr(smem, "_COMPILED", set())
    monkeypatch.setattr(smem, "smem_problem", lambda *a: next(iter(smem._BROKEN.values()), None))
    model = tiny_backbone(seed=46)
    with caplog.at_level(logging.WARNING, logger=relative_attention.__name__):
        assert_rows_match(model, random_batch(3, seed=47, max_len=80))
    assert Uncompilable.launches == 1  # then known broken: not launched for the other layers and calls
    assert "did not compile with this Triton (RuntimeError: error: cannot reinterpret" in caplog.text
    assert "using the Triton kernel's scratch shear" in caplog.text
    ids, cu, longest = pack(random_batch(2, seed=48, max_len=20))
    tables, slots = relative_attention.tile_tables_for(model, longest)
    for first_launch in (False, True):  # known broken / failing at this very launch: the same error
        if first_launch:
            monkeypatch.setattr(smem, "_BROKEN", {})
        with pytest.raises(ValueError, match="shear='smem' cannot run here: the shared-memory kernel did not"):
            relative_attention.packed_attention(tables[0], torch.zeros(ids.numel(), 64), cu, longest, slots,
                                                shear="smem")
    assert Uncompilable.launches == 2


def test_triton_without_gpu_or_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    model = tiny_backbone(seed=41)
    ids, cu, longest = pack(random_batch(2, seed=42, max_len=20))
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton")


def test_kernel_choice_from_env(monkeypatch):
    """attention_impl="kernel" means the tile kernel unless SPARKCURATE_ATTENTION_KERNEL says dflash."""
    assert packed.gpu_kernel() == "triton"
    monkeypatch.setenv(packed.KERNEL_ENV, "DFlash ")
    assert packed.gpu_kernel() == "dflash"
    monkeypatch.setenv(packed.KERNEL_ENV, "flash")
    with pytest.raises(ValueError, match=packed.KERNEL_ENV):
        packed.gpu_kernel()
    monkeypatch.setenv(packed.KERNEL_ENV, "triton")
    model = tiny_backbone(seed=43)
    ids, cu, longest = pack(random_batch(3, seed=44, max_len=30))
    via_kernel = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="kernel")
    direct = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton")
    assert torch.equal(via_kernel, direct)


def test_tables_rebuilt_after_weight_change():
    """The cached fused Q/K/V weight and position tables follow in-place weight changes."""
    model = tiny_backbone(seed=45)
    seqs = random_batch(3, seed=46, max_len=40)
    ids, cu, longest = pack(seqs)
    before = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton")
    with torch.no_grad():
        model.encoder.layer[0].attention.self.key_proj.weight.mul_(1.5)
        model.encoder.rel_embeddings.weight.add_(0.3)
    after = packed.packed_last_hidden(model, ids, cu, longest, attention_impl="triton")
    assert not torch.allclose(before, after)
    assert_rows_match(model, seqs)


def test_shear_layouts_read_entry_r_plus_c_without_bank_conflicts():
    """The shared-memory kernel's products are stored with ``pad`` elements after each row and read through a view
    whose pitch is one longer (two padding levels: Gluon's paddings are powers of two). Check, from the layouts'
    own interval/padding pairs, that view element (r, c) is stored entry (r, r + c) for every pad; and, in a model
    of the 32 four-byte banks, that the default pads cut the 8-way conflicts of unpadded rows (the eighth round's
    layout) to at most 2 for the kernel's stores and sheared loads (what the ninth round measured: 2.44 -> 1.39
    ms a layer on an H100)."""
    from sparkcurate.engine.kernels import relative_attention_smem as smem

    if smem.gluon_problem():
        pytest.skip(smem.gluon_problem())
    block, window = smem.BLOCK, 2 * smem.BLOCK

    def offset(layout, row, col):  # element offset of a row-major [block, window] tile in a (padded) layout
        linear = row * window + col
        pairs = getattr(layout, "interval_padding_pairs", [])
        return linear + sum(pad * (linear // interval) for interval, pad in pairs)

    for pad in (0, 2, 4, 8):
        stored, sheared = smem.shear_layouts(pad)
        for r in range(block):
            for c in range(block):
                assert offset(sheared, r, c) == offset(stored, r, r + c), (pad, r, c)
    with pytest.raises(ValueError, match="power of two"):
        smem.shear_layouts(3)

    def ways(halves):  # serialised accesses of one warp-wide shared-memory instruction (2-byte elements)
        banks: dict = {}
        for h in halves:
            banks.setdefault((h // 2) % 32, set()).add(h // 2)
        return max(len(words) for words in banks.values())

    lanes = range(32)  # MMA accumulator layout: lane t holds row t // 4, columns 2 * (t % 4) and + 1

    def conflicts(pad):
        stored, sheared = smem.shear_layouts(pad)
        store = ways([offset(stored, t // 4, 2 * (t % 4)) for t in lanes])
        c2p = max(ways([offset(sheared, t // 4, 2 * (t % 4) + e) for t in lanes]) for e in (0, 1))
        p2c = max(ways([offset(sheared, 2 * (t % 4) + e, t // 4) for t in lanes]) for e in (0, 1))
        return store, c2p, p2c

    assert conflicts(0) == (8, 8, 4)
    for pad in smem.SHEAR_PADS:
        assert max(conflicts(pad)) <= 2, conflicts(pad)
