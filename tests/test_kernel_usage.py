"""The kernels' switches (one reader, one error) and the report of what the engine actually ran (active_kernels)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparkcurate.engine.kernels import switches, usage

ENGINE = Path(__file__).resolve().parent.parent / "sparkcurate" / "engine"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for variable in switches.SWITCHES:
        monkeypatch.delenv(variable, raising=False)


def test_every_engine_switch_is_declared_and_read_through_switches():
    """Each SPARKCURATE_* name in the engine is a row of SWITCHES, and only switches.py reads the environment
    (tokenize.py only sets the tokenizers library's own variable)."""
    named, readers = set(), []
    for path in ENGINE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"SPARKCURATE_[A-Z_]+", text))
        if re.search(r"os\.(environ\.get|getenv)\(|os\.environ\[", text) and path.name != "switches.py":
            readers.append(path.name)
    assert named and named <= set(switches.SWITCHES), sorted(named - set(switches.SWITCHES))
    assert readers == []


def _readers():
    """Every place that reads a switch, called the way the engine calls it."""
    import torch

    from sparkcurate.engine import deberta_packed
    from sparkcurate.engine.kernels import dflash_attention, gelu_epilogue, relative_attention, residual_norm
    from sparkcurate.engine.kernels import relative_attention_smem as smem
    from sparkcurate.models import lean

    return {
        switches.ATTENTION_KERNEL: deberta_packed.gpu_kernel,
        switches.SMEM_ATTENTION: lambda: smem.smem_problem(torch.device("cpu"), torch.float16, 64),
        switches.ATTENTION_CONFIG: lambda: relative_attention.launch_config(64),
        switches.DFLASH_TUNING: dflash_attention.tuning_mode,
        switches.FUSED_NORM: residual_norm.mode,
        switches.GELU_EPILOGUE: gelu_epilogue.mode,
        switches.LEAN_LOAD: lean.mode,
    }


def test_a_bad_value_gives_the_same_error_for_every_switch(monkeypatch):
    pytest.importorskip("torch")
    readers = _readers()
    assert set(readers) == set(switches.SWITCHES)
    for variable, reader in readers.items():
        monkeypatch.setenv(variable, "Bogus")
        with pytest.raises(ValueError, match=rf"^{variable} must be .*, got 'bogus' \("):
            reader()
        monkeypatch.setenv(variable, "  ")  # blank: the default
        assert switches.read(variable) == switches.SWITCHES[variable].default
        monkeypatch.delenv(variable)
        reader()  # unset: the default, no error


def test_on_off_spellings(monkeypatch):
    monkeypatch.setenv(switches.FUSED_NORM, "0")
    assert switches.read(switches.FUSED_NORM) == "off"
    monkeypatch.setenv(switches.SMEM_ATTENTION, " True ")
    assert switches.read(switches.SMEM_ATTENTION) == "on"
    monkeypatch.setenv(switches.GELU_EPILOGUE, "yes")  # "on" is not one of its modes
    with pytest.raises(ValueError, match="SPARKCURATE_GELU_EPILOGUE must be one of"):
        switches.read(switches.GELU_EPILOGUE)
    monkeypatch.setenv(switches.ATTENTION_CONFIG, "32,32,4,2")
    assert switches.read(switches.ATTENTION_CONFIG) == "32,32,4,2"


def test_report_lists_every_switch_in_force(monkeypatch):
    monkeypatch.setenv(switches.FUSED_NORM, "OFF")
    monkeypatch.setenv(switches.GELU_EPILOGUE, "sometimes")
    report = usage.active_kernels({"attention": "triton"})
    assert report[switches.FUSED_NORM] == "off"
    assert report[switches.GELU_EPILOGUE] == "invalid: 'sometimes'"  # reported, not raised
    assert report[switches.ATTENTION_KERNEL] == "triton" and report["attention"] == "triton"
    assert set(switches.SWITCHES) <= set(report)


def test_recording_goes_to_the_engine_in_context_and_the_process():
    usage.reset()
    mine: dict[str, str] = {}
    usage.record("attention", "reference")
    with usage.recording(mine):
        usage.record("fused_norm", "off")
        usage.record("attention_fallback", "no GPU")
        usage.record("attention_fallback", None)
    assert mine == {"fused_norm": "off"}
    assert usage.active_kernels()["attention"] == "reference" and usage.active_kernels()["fused_norm"] == "off"


def test_task_counts_round_trip():
    reports = {"domain": {"attention": "triton", "fused_norm": "on", "forward_reason": "a|b: c=d"},
               "quality": {"attention": "triton"}}
    stats = {"tasks": 3, "docs": 10}
    for _ in range(3):
        for key, n in usage.task_counts(reports).items():
            stats[key] = stats.get(key, 0) + n
    kernels, rest = usage.split_task_counts(stats)
    assert rest == {"tasks": 3, "docs": 10}
    assert kernels == {"domain": {"attention": {"triton": 3}, "fused_norm": {"on": 3}, "forward_reason": {"a|b: c=d": 3}},
                       "quality": {"attention": {"triton": 3}}}


# --------------------------------------------------------------------------- what the engine ran


@pytest.fixture(scope="module")
def classifier(deberta_dir):
    from sparkcurate.classifiers import DomainClassifier

    c = DomainClassifier(model=str(deberta_dir), device="cpu")
    c.preflight()
    return c


TEXTS = ["Stocks fell sharply.", "The match ended in a draw after extra time.", "x"]


def test_padded_engine_reports_why_not_packed(classifier):
    engine = classifier.load_engine("cpu")
    engine.predict(TEXTS)
    report = engine.active_kernels()
    assert report["precision"] == "fp32" and report["forward"] == "padded"
    assert report["forward_reason"] == "packed attention needs a CUDA device, got 'cpu'"
    assert "attention" not in report and report[switches.FUSED_NORM] == "auto"


def test_packed_engine_reports_kernels_fallbacks_and_switches(classifier, monkeypatch):
    """The packed forward forced on the CPU (Triton's interpreter): the tile kernel runs, its shared-memory shear
    falls back with the reason, and the fused norm follows SPARKCURATE_FUSED_NORM; a padded engine working in the
    same process keeps its own report."""
    from tests.conftest import triton_interpreter_problem

    if triton_interpreter_problem():
        pytest.skip(triton_interpreter_problem())
    from sparkcurate.models.heads import ClsHeadModel

    padded = classifier.load_engine("cpu")
    want = padded.predict(TEXTS)
    monkeypatch.setattr(ClsHeadModel, "packed_support", lambda self, device: (True, "forced for the test"))
    engine = classifier.load_engine("cpu")
    assert engine.packed

    monkeypatch.setenv(switches.FUSED_NORM, "off")
    got = engine.predict(TEXTS)
    report = engine.active_kernels()
    assert abs(got - want).max() <= 1e-4
    assert report["forward"] == "packed" and report["forward_reason"] == "forced for the test"
    assert report["attention"] == "triton" and report["attention_shear"] == "scratch"
    assert report["attention_fallback"] == "shared-memory kernel not used: needs a CUDA device"
    assert report["fused_norm"] == "off" and report[switches.FUSED_NORM] == "off"
    assert report["gelu_epilogue"] == "off"  # CPU: never

    monkeypatch.setenv(switches.FUSED_NORM, "on")
    monkeypatch.setenv(switches.SMEM_ATTENTION, "off")
    engine.predict(TEXTS)
    report = engine.active_kernels()
    assert report["fused_norm"] == "on" and report[switches.FUSED_NORM] == "on"
    assert report["attention_fallback"] == "shared-memory kernel not used: SPARKCURATE_SMEM_ATTENTION=off"
    assert report[switches.SMEM_ATTENTION] == "off"

    padded.predict(TEXTS)
    assert "attention" not in padded.active_kernels()
    assert usage.active_kernels()["attention"] == "triton"  # the process's latest
