"""A CPU smoke of the benchmark harness: it runs and writes results in the committed format. Never timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(module: str, args: list[str], tmp_path) -> dict:
    res = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=900,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_gpu_stage_smoke(tmp_path):
    doc = _run("benchmarks.gpu_stage", ["--smoke", "--profile-ops", "--out-dir", str(tmp_path)], tmp_path)
    assert {"device", "date", "command", "results"} <= set(doc)
    names = {r["name"] for r in doc["results"]}
    assert {"sparkcurate_gpu_stage", "sorted_bf16_baseline"} <= names
    assert all(r.get("docs_per_s") is None or r["docs_per_s"] > 0 for r in doc["results"])
    profile = doc["op_profile"]  # on CPU: CPU op time of the packed torch backend (exercises the code only)
    assert profile["activity"] == "cpu"
    assert abs(sum(c["share"] for c in profile["categories"].values()) - 1) < 1e-3


@pytest.mark.slow
def test_precision_budget_probe_smoke(tmp_path):
    """The CPU emulation of fp16 roundings runs and ranks: fewer roundings, closer to fp32."""
    doc = _run("benchmarks.probes.precision_budget", ["--smoke", "--out", str(tmp_path / "budget.json")], tmp_path)
    rows = {r["name"]: r for r in doc["results"]}
    assert {"fp16", "weights_only", "engine", "gemm_operands_only"} <= set(rows)
    assert all(0 <= r["over_1e2_fraction"] <= 1 and r["max"] >= r["p90"] >= 0 for r in rows.values())
    assert rows["fp16"]["max"] > 0  # the emulation rounds something
    assert rows["gemm_operands_only"]["mean_doc_max_diff"] < rows["fp16"]["mean_doc_max_diff"]


@pytest.mark.slow
def test_engine_precision_probe_smoke(tmp_path):
    """The GPU probe's code path on the CPU (fp32 engine): only its fp16 head moves the probabilities, so the
    head's switch, and its restoring of the fp32 weights, work."""
    doc = _run("benchmarks.probes.engine_precision", ["--smoke", "--out", str(tmp_path / "ep.json")], tmp_path)
    rows = doc["results"]
    assert len(rows) == 6 and all(r["docs_per_s"] > 0 for r in rows)
    for r in rows:
        assert (r["max_prob_abs_diff"] == 0) == (r["head"] == "fp32"), r


@pytest.mark.slow
def test_spark_e2e_layouts_smoke(tmp_path):
    """Layouts over two calls sharing a work dir (data generated once), each its own application with a warm-up
    run, merged into one scaling table."""
    work, first_dir, second_dir = tmp_path / "work", tmp_path / "first", tmp_path / "second"
    common = ["--smoke", "--warm-up-docs", "20", "--work-dir", str(work)]
    first = _run("benchmarks.spark_e2e", [*common, "--layouts", "1x1", "--results", str(first_dir)], first_dir)
    stamp = (work / "data.generated.json").stat().st_mtime
    first_file = next(first_dir.glob("*.json"))
    doc = _run("benchmarks.spark_e2e", [*common, "--layouts", "2x1", "--merge-with", str(first_file),
                                        "--results", str(second_dir)], second_dir)
    assert (work / "data.generated.json").stat().st_mtime == stamp  # the second call reused the data
    results = {r["name"]: r for r in doc["results"]}
    assert set(results) == {"sparkcurate_spark_e2e_1gpu_1task", "sparkcurate_spark_e2e_2gpu_1task"}
    assert results["sparkcurate_spark_e2e_1gpu_1task"]["command"] == first["command"]
    for r in results.values():
        assert r["docs"] == 200 and r["task_stats"]["docs"] == 200 and r["schema"] == "id STRING, text STRING"
        assert r["input_splits"]["slots"] == 2  # smoke runs on local[2]
    assert set(doc["scaling"]) == {"2gpu_vs_1gpu_1task_job", "2gpu_vs_1gpu_1task_classify_phase"}


@pytest.mark.slow
def test_spark_e2e_smoke(tmp_path):
    doc = _run("benchmarks.spark_e2e", ["--smoke", "--results", str(tmp_path)], tmp_path)
    results = {r["name"]: r for r in doc["results"]}
    assert results["sparkcurate_spark_e2e"]["docs"] == 200 and results["sparkcurate_spark_e2e"]["docs_per_s"] > 0
    assert results["predict_batch_udf_fp32"]["docs"] == 100


def _rapids_smoke_args() -> list[str]:
    """The plugin rows for the formats smoke, in explainOnly mode: only where SPARKCURATE_RAPIDS_JAR names the jar
    and this pyspark has a shim in it (tests/test_rapids_plugin.py: .ci/run's RAPIDS step, pyspark 4.2.0)."""
    from tests.test_rapids_plugin import SUPPORTED_PYSPARK

    jar = os.environ.get("SPARKCURATE_RAPIDS_JAR")
    pyspark = pytest.importorskip("pyspark")
    if not jar or pyspark.__version__ not in SUPPORTED_PYSPARK:
        return []
    return ["--rapids-jar", jar, "--rapids-variants", "pool-NONE,pool-ASYNC-0.3+python-gpu",
            "--rapids-formats", "parquet,jsonl_exact"]


@pytest.mark.slow
def test_spark_e2e_formats_smoke(tmp_path):
    """``--formats all``: every format row on the same documents, each its own application, bytes and docs/s
    recorded, the formats' predictions alike; with the RAPIDS jar, the plugin rows (explainOnly: no GPU here)
    checked against the plugin-off output and their operators recorded."""
    from benchmarks.spark_formats import FORMATS

    rapids = _rapids_smoke_args()
    doc = _run("benchmarks.spark_e2e", ["--smoke", "--formats", "all", "--work-dir", str(tmp_path / "work"),
                                        "--out", str(tmp_path / "formats.json"), *rapids], tmp_path)
    assert {"card", "command", "rows", "baseline", "table", "input_bytes"} <= set(doc)
    rows = {r["name"]: r for r in doc["rows"]}
    for fmt in FORMATS:
        r = rows[fmt]
        assert r["docs"] == 200 and r["docs_per_s"] > 0 and r["output_bytes"] > 0 and not r["plugin"], r
        if fmt != "jsonl_reserialize":  # the same documents through another format: the same predictions
            same = r["vs_jsonl_reserialize"]
            assert same["same_records"] and same["records"] == 200 and same["label_mismatches"] == 0, same
            assert same["max_prob_abs_diff"] < 1e-4, same
    assert rows["attributes"]["output_bytes"] < rows["jsonl_reserialize"]["output_bytes"] / 2
    assert rows["jsonl_exact"]["vs_jsonl_reserialize"]["equal"]  # the same parsed texts, the same batches
    assert doc["baseline"]["docs"] == 100 and doc["baseline"]["docs_per_s"] > 0
    plugin = [r for r in doc["rows"] if r["plugin"]]
    assert len(plugin) == (4 if rapids else 0) and doc["rapids_mode"] == ("explainOnly" if rapids else None)
    for r in plugin:
        assert r["rapids_mode"] == "explainOnly" and r["rapids"]["enabled"] is True, r
        assert r["vs_plugin_off"]["equal"], r["vs_plugin_off"]
        assert r["rapids"]["gpu_operators"] == [] and r["rapids"]["cpu_operators"], r["rapids"]


def test_formats_harness_variant_names_and_output_check():
    """The plugin rows' memory settings by name, and the check of a plugin row's output: a changed label, a
    probability off by more than the tolerance, or a lost record each make it unequal."""
    from benchmarks.spark_formats import compare, plugin_conf, rapids_variant_conf

    assert rapids_variant_conf("pool-NONE") == {"spark.rapids.memory.gpu.pool": "NONE",
                                                "spark.rapids.sql.python.gpu.enabled": "false"}
    capped = rapids_variant_conf("pool-ASYNC-0.25+python-gpu")
    assert capped["spark.rapids.memory.gpu.allocFraction"] == capped["spark.rapids.memory.gpu.maxAllocFraction"] \
        == "0.25"
    assert capped["spark.rapids.sql.python.gpu.enabled"] == "true"
    assert rapids_variant_conf("pool-ASYNC")["spark.rapids.memory.gpu.allocFraction"] == "0.3"
    for bad in ("pool-ARENA", "pool-NONE-0.3", "NONE", "pool-ASYNC-3"):
        with pytest.raises(ValueError):
            rapids_variant_conf(bad)
    assert "spark.driver.extraClassPath" not in plugin_conf("on-classpath", "pool-NONE", explain_only=False)
    assert plugin_conf("/x/r.jar", "pool-NONE", explain_only=True)["spark.rapids.sql.mode"] == "explainOnly"

    off = {"a": ("Sports", [0.9, 0.1]), "b": ("News", [0.2, 0.8])}
    assert compare(off, dict(off))["equal"]
    assert compare(off, {**off, "b": ("News", [0.2, 0.8 + 1e-7])})["equal"]
    assert not compare(off, {**off, "b": ("News", [0.2, 0.8 + 1e-5])})["equal"]
    assert compare(off, {**off, "b": ("Sports", [0.2, 0.8])})["label_mismatches"] == 1
    lost = compare(off, {"a": off["a"]})
    assert not lost["equal"] and lost["missing"] == 1


@pytest.mark.slow
def test_cpu_path_smoke(tmp_path):
    doc = _run("benchmarks.cpu_path", ["--smoke", "--results", str(tmp_path)], tmp_path)
    assert {"device", "date", "command", "results", "speedup"} <= set(doc)
    results = {r["name"]: r for r in doc["results"]}
    assert set(results) == {"plain_transformers_loop", "sparkcurate_engine_cpu"}
    for r in results.values():
        assert r["docs"] == 40 and r["docs_per_s"] > 0 and r["tokens_per_s"] > 0
        # Same weights, same inputs: the two loops must give the same probabilities, and documents must differ
        # from one another by far more than that, or results returned in the wrong order would pass unseen.
        assert r["max_prob_abs_diff"] < 1e-4
        assert r["prob_std_across_docs"] > 1e-2
        assert r["argmax_agreement"] == 1.0


@pytest.mark.slow
def test_one_pass_fresh_apps_smoke(tmp_path):
    """One pass vs three runs, each run its own Spark application (the benchmark's code path, never its speed)."""
    doc = _run("benchmarks.one_pass", ["--docs", "40", "--files", "2", "--repeat", "1", "--fresh-apps",
                                       "--results", str(tmp_path)], tmp_path)
    results = {r["name"]: r for r in doc["results"]}
    assert set(results) == {"one_pass_domain_quality_fineweb", "three_separate_runs"}
    assert all(r["seconds"] > 0 and len(r["all_seconds"]) == 1 for r in results.values())
    assert "own Spark application" in doc["note"]


def test_attention_kernel_harness_on_the_interpreter():
    """benchmarks/attention_kernel.py's variants (both shears, the ablation) on Triton's CPU interpreter: every row
    timed, the full-term rows as exact as the strict-fp32 reference run of the same kernel."""
    import argparse

    torch = pytest.importorskip("torch")
    triton = pytest.importorskip("triton")
    from sparkcurate.engine.kernels.switches import triton_interpreting

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 9) or not triton_interpreting():
        pytest.skip("needs Triton >= 3.9's interpreter (tests/conftest.py turns it on without CUDA)")
    from benchmarks import attention_kernel
    from benchmarks.synthetic import DOMAIN

    args = argparse.Namespace(configs=["32,32,4,2"], shears=["scratch", "gather"], programs_per_sm=[2],
                              scratch_fp32=[0, 1], ablation=True, budget=700, repeats=1, seed=0, dtype=torch.float32)
    small = dict(hidden=64, heads=2)  # the harness, not the shape, is under test: the interpreter is slow
    fp32 = attention_kernel.build_layer("cpu", **small).float()
    rows = attention_kernel.bench_mix("domain", DOMAIN, args, attention_kernel.build_layer("cpu", **small), fp32,
                                      torch.device("cpu"))
    assert [(r["shear"], r["scratch_fp32"], r["terms"]) for r in rows] == [
        ("scratch", 0, "both"), ("scratch", 1, "both"), ("gather", 0, "both"), ("scratch", False, "content"),
        ("scratch", False, "c2p")]
    assert all(r["ms"] > 0 and 0 < r["tokens"] <= 700 for r in rows)
    assert all(r["rel_err_vs_fp32"] < 1e-5 for r in rows if r["terms"] == "both")


def test_combine_keeps_both_commands_and_a_note(tmp_path):
    """The combined results file carries the tracked names, both commands, quality rows renamed, and the note
    that says what a run left out."""
    from benchmarks.combine import main

    stage = {"device": "card", "date": "d", "command": "gpu_stage cmd", "results": [
        {"name": "sparkcurate_gpu_stage", "mix": "domain", "docs_per_s": 2.0, "argmax_agreement": 1.0, "extra": 1},
        {"name": "sparkcurate_gpu_stage", "mix": "quality", "docs_per_s": 1.0}]}
    e2e = {"device": "card", "command": "e2e cmd", "results": [{"name": "sparkcurate_spark_e2e", "docs_per_s": 3.0}]}
    (tmp_path / "s.json").write_text(json.dumps(stage))
    (tmp_path / "e.json").write_text(json.dumps(e2e))
    out = tmp_path / "c.json"
    assert main([str(tmp_path / "s.json"), str(tmp_path / "e.json"), "--out", str(out), "--note", "no baseline"]) == 0
    doc = json.loads(out.read_text())
    assert doc["command"] == {"gpu_stage": "gpu_stage cmd", "spark_e2e": "e2e cmd"}
    assert doc["note"] == "no baseline"
    assert [r["name"] for r in doc["results"]] == ["sparkcurate_spark_e2e", "sparkcurate_gpu_stage",
                                                   "sparkcurate_gpu_stage_quality"]
    assert "extra" not in doc["results"][1]


def test_kernel_resources_compiles_for_sm90():
    """The compile-only report (benchmarks/kernel_resources.py) on this GPU-less machine: the attention kernel
    compiled for an H100 with and without the p2c term (which costs registers and load pipelining, NOTES seventh
    round), and a clear refusal under Triton's interpreter."""
    import os

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rows = {}
    for flag in ([], ["--no-p2c"]):
        res = subprocess.run([sys.executable, "-m", "benchmarks.kernel_resources", *flag], capture_output=True,
                             text=True, timeout=600, cwd=REPO, env=env)
        if res.returncode != 0 and "no bundled ptxas" in res.stderr:
            pytest.skip("this Triton wheel's ptxas cannot assemble its own PTX")
        assert res.returncode == 0, res.stderr[-3000:]
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows[bool(flag)] = row
        assert row["kernel"] == "attention" and row["config"] == [64, 64, 4, 3]
        assert 0 < row["registers"] <= 255 and row["mma_ops"] >= 3 and row["async_copies"] > 0
    assert rows[True]["registers"] < rows[False]["registers"] and not rows[True]["p2c"]
    res = subprocess.run([sys.executable, "-m", "benchmarks.kernel_resources"], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={**env, "TRITON_INTERPRET": "1"})
    assert res.returncode == 2 and "TRITON_INTERPRET" in res.stderr


@pytest.mark.slow
def test_jsonl_exact_smoke(tmp_path):
    """The three JSONL paths run on the same documents and report time and bytes (benchmarks/jsonl_exact.py)."""
    doc = _run("benchmarks.jsonl_exact", ["--smoke", "--out-dir", str(tmp_path)], tmp_path)
    rows = {r["name"]: r for r in doc["results"]}
    assert set(rows) == {"reserialize", "exact", "attributes"}
    assert all(r["input_records"] == 2000 and r["output_bytes"] > 0 for r in rows.values())
    assert rows["attributes"]["output_bytes"] < rows["exact"]["output_bytes"]


@pytest.mark.slow
def test_worker_load_smoke(tmp_path):
    """Both loads run in fresh interpreters and say which modules they built; the lean one imports no
    transformers module."""
    doc = _run("benchmarks.worker_load", ["--smoke", "--rows", "lean,full", "--out", str(tmp_path / "load.json")],
               tmp_path)
    assert {"device", "date", "command", "results"} <= set(doc)
    rows = {r["name"]: r for r in doc["results"]}
    assert rows["lean"]["backbone"] == "sparkcurate.engine.deberta.DebertaBackbone"
    assert rows["lean"]["tokenizer"] == "RustTokenizer" and rows["lean"]["transformers_modules_imported"] == 0
    assert rows["full"]["backbone"].startswith("transformers.") and rows["full"]["transformers_modules_imported"]
    assert all(r["load_total_s"] > 0 and "import_torch" in r["seconds"] for r in rows.values())
    assert doc["outputs_agreement"]["lean_vs_full"]["max_abs_diff"] < 1e-5  # fp32 on the CPU: the same numbers


@pytest.mark.slow
def test_fixed_costs_smoke(tmp_path):
    """One fresh command on local-cluster with a fake GPU: the driver's steps and Spark's jobs are both found, and
    every job of the run is in the breakdown (benchmarks/fixed_costs.py)."""
    doc = _run("benchmarks.fixed_costs", ["--smoke", "--out", str(tmp_path / "fc.json")], tmp_path)
    [run] = doc["runs"]
    assert run["docs"] == run["output_records"] == 200
    assert {"preflight", "get_session", "pipeline_run", "groups", "report"} <= set(run["phases_s"])
    kinds = [j["kind"] for j in run["jobs"]]
    assert kinds[0].startswith("sparkcurate: waiting for an executor") and "count" in kinds
    assert len(kinds) == run["spark_jobs"] == doc["variants"]["after"]["spark_jobs"]
    assert 0 < run["app_start_s"] < run["executor_registered_s"] < run["app_end_s"] < run["command_s"]


def test_fp8_sim_rounds_operands_to_e4m3_and_restores_the_products():
    """The FP8 precision probe: operands rounded to e4m3 with row-wise scales (an error of e4m3's size, not 0
    and not more), every wide linear layer routed through it inside the block, the engine's product after it."""
    import torch
    import torch.nn.functional as F

    from benchmarks.probes.fp8_gemm import E4M3_MAX, fp8_product, quantize_rows, simulated_fp8_linears

    torch.manual_seed(0)
    x, w, b = torch.randn(64, 96), torch.randn(512, 96) * 0.05, torch.randn(512) * 0.05
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert float(q.float().abs().amax(1).min()) == E4M3_MAX  # every row's largest entry maps to e4m3's largest
    rel = ((q.float() * scale - x).abs() / x.abs().clamp(min=1e-3)).max()
    assert 2**-6 < rel <= 2**-4 + 1e-6  # 3 mantissa bits: half an ulp is at most 2**-4 of the value
    exact = F.linear(x, w, b)
    got = fp8_product(x, w, b)
    err = float((got - exact).abs().max())
    assert 1e-4 < err < 0.05 * float(exact.abs().max())
    small = torch.randn(3, 96)  # a head's output layer: 3 features, the plain product
    with simulated_fp8_linears() as calls:
        assert torch.equal(F.linear(x, w, b), got)
        assert torch.allclose(F.linear(x, small), x @ small.t(), atol=1e-6)
        out = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    assert calls == {"fp8": 2, "kept": 1}
    assert torch.allclose(out, F.gelu(got, approximate="tanh"), atol=1e-6)
    assert torch.equal(F.linear(x, w, b), exact)  # restored
