"""conf/ and recipes/: discovery scripts, spark-defaults invariants, shell syntax, and Spark accepting them."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
RECIPES = REPO / "recipes"
DISCOVERY = CONF / "getGpusResources.sh"
FAKE = CONF / "fakeGpusResources.sh"
BASH = shutil.which("bash") or "/bin/bash"
CONF_FILES = sorted(CONF.glob("spark-defaults.*.conf"))
GPU_CONF_FILES = [p for p in CONF_FILES if "gpu" in p.name or "rapids" in p.name]
SHELL_SCRIPTS = sorted(list(CONF.rglob("*.sh")) + list(RECIPES.rglob("*.sh")))
INT_MAX = 2**31 - 1


def parse_conf(path: Path) -> dict[str, str]:
    """spark-defaults.conf format: 'key value' per line, '#' comments; duplicate keys are an error."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        assert len(parts) == 2, f"{path.name}:{number}: no value in {raw!r}"
        key, value = parts[0], parts[1].strip()
        assert key.startswith("spark."), f"{path.name}:{number}: {key} is not a Spark key"
        assert "#" not in value, f"{path.name}:{number}: Spark does not strip trailing comments"
        assert key not in values, f"{path.name}:{number}: duplicate key {key}"
        values[key] = value
    return values


def run_discovery(path_dirs: list[Path], **env: str) -> tuple[int, dict]:
    """Run getGpusResources.sh with only ``path_dirs`` on PATH (bash given by absolute path)."""
    full_env = {"PATH": os.pathsep.join(str(p) for p in path_dirs), **env}
    proc = subprocess.run([BASH, str(DISCOVERY)], env=full_env, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, json.loads(proc.stdout)


def fake_nvidia_smi(folder: Path, body: str) -> Path:
    """A fake nvidia-smi that insists on the query the script must make."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(
        "#!" + BASH + "\n"
        'if [ "$*" != "--query-gpu=index --format=csv,noheader" ]; then echo "bad args: $*" >&2; exit 3; fi\n'
        + body
    )
    script.chmod(0o755)
    return folder


# --- discovery scripts -----------------------------------------------------------------------------------

def test_discovery_without_nvidia_smi_reports_no_gpu(tmp_path):
    rc, out = run_discovery([tmp_path])
    assert rc == 0
    assert out == {"name": "gpu", "addresses": []}


def test_discovery_lists_gpus_from_nvidia_smi(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'printf "0\\n1\\n"\n')
    assert run_discovery([bin_dir]) == (0, {"name": "gpu", "addresses": ["0", "1"]})


def test_discovery_survives_a_failing_nvidia_smi(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'echo "No devices were found"; exit 6\n')
    assert run_discovery([bin_dir]) == (0, {"name": "gpu", "addresses": []})


def test_discovery_ignores_noise_lines(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'printf " 0 \\nWARNING: something\\n1\\n\\n"\n')
    assert run_discovery([bin_dir])[1]["addresses"] == ["0", "1"]


@pytest.mark.parametrize(
    ("cvd", "expected"),
    [("1", ["1"]), ("2, 3", ["2", "3"]), ("3,1", ["3", "1"]), ("GPU-aaa,GPU-bbb", ["GPU-aaa", "GPU-bbb"]),
     ("0,1,7", ["0", "1"]), ("", []), ("-1", [])],
)
def test_discovery_reports_only_cuda_visible_devices(tmp_path, cvd, expected):
    # The ids in CUDA_VISIBLE_DEVICES, as written: sparkcurate.spark.devices maps each to its position there.
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'printf "0\\n1\\n2\\n3\\n"\n')
    rc, out = run_discovery([bin_dir], CUDA_VISIBLE_DEVICES=cvd)
    assert rc == 0 and out["addresses"] == expected


def test_discovery_can_ignore_cuda_visible_devices(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'printf "0\\n1\\n2\\n"\n')
    _, out = run_discovery([bin_dir], CUDA_VISIBLE_DEVICES="1", SPARKCURATE_DISCOVERY_IGNORE_CVD="1")
    assert out["addresses"] == ["0", "1", "2"]


def test_discovery_addresses_map_to_the_right_cuda_device(tmp_path):
    """The script's addresses and sparkcurate.spark.devices agree: each visible GPU gets its own ordinal."""
    from sparkcurate.spark.devices import cuda_index_for_address

    bin_dir = fake_nvidia_smi(tmp_path / "bin", 'printf "0\\n1\\n2\\n3\\n"\n')
    for cvd in ["2,3", "3,1,0"]:
        _, out = run_discovery([bin_dir], CUDA_VISIBLE_DEVICES=cvd)
        assert [cuda_index_for_address(a, cvd) for a in out["addresses"]] == list(range(len(cvd.split(","))))
    _, out = run_discovery([bin_dir])
    assert [cuda_index_for_address(a, None) for a in out["addresses"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(("value", "count"), [(None, 2), ("0", 0), ("4", 4)])
def test_fake_discovery_prints_n_addresses(value, count):
    env = {"PATH": os.environ.get("PATH", "")}
    if value is not None:
        env["SPARKCURATE_FAKE_GPUS"] = value
    proc = subprocess.run([str(FAKE)], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(proc.stdout) == {"name": "gpu", "addresses": [str(i) for i in range(count)]}


def test_fake_discovery_rejects_a_non_number():
    env = {"PATH": os.environ.get("PATH", ""), "SPARKCURATE_FAKE_GPUS": "two"}
    proc = subprocess.run([str(FAKE)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "whole number" in proc.stderr


# --- shell scripts and JSON in conf/ and recipes/ --------------------------------------------------------

def test_expected_scripts_exist():
    names = {p.relative_to(REPO).as_posix() for p in SHELL_SCRIPTS}
    for required in ["conf/getGpusResources.sh", "conf/fakeGpusResources.sh",
                     "recipes/databricks/init.sh", "recipes/emr/add-steps.sh", "recipes/emr/bootstrap.sh",
                     "recipes/dataproc/submit.sh", "recipes/dataproc/init-action.sh",
                     "recipes/spark-submit/pack-env.sh", "recipes/spark-submit/submit.sh"]:
        assert required in names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shell_scripts_parse_and_are_executable(script):
    proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    text = script.read_text()
    assert text.startswith("#!"), "needs a shebang"
    if script.parent != CONF:
        assert "Not run here" in text or "not run" in text.lower(), "recipes must say they were not run here"


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.json")), ids=lambda p: p.name)
def test_recipe_json_parses(path):
    json.loads(path.read_text())


def test_databricks_notebook_is_in_source_format():
    text = (RECIPES / "databricks" / "sparkcurate_classify.py").read_text()
    assert text.startswith("# Databricks notebook source\n")
    assert text.count("# COMMAND ----------") >= 3
    assert "DomainClassifier(model=" in text and "read_jsonl(spark," in text and "write_jsonl(out," in text
    compile(text, "sparkcurate_classify.py", "exec")  # valid Python


def test_cloud_recipes_set_task_gpu_amounts_spark_accepts():
    for path in [RECIPES / "databricks" / "cluster.json", RECIPES / "databricks" / "cluster-rapids.json"]:
        amount = float(json.loads(path.read_text())["spark_conf"]["spark.task.resource.gpu.amount"])
        assert amount.is_integer() or amount <= 0.5
    emr = {c["Classification"]: c for c in json.loads((RECIPES / "emr" / "configurations.json").read_text())}
    spark_defaults = emr["spark-defaults"]["Properties"]
    assert spark_defaults["spark.executor.resource.gpu.discoveryScript"] == "/opt/sparkcurate/getGpusResources.sh"
    assert "/opt/sparkcurate/getGpusResources.sh" in (RECIPES / "emr" / "bootstrap.sh").read_text()
    assert emr["yarn-site"]["Properties"]["yarn.resource-types"] == "yarn.io/gpu"


# --- spark-defaults files --------------------------------------------------------------------------------

def test_expected_conf_files_exist():
    assert {p.name for p in CONF_FILES} == {
        "spark-defaults.local-cpu.conf", "spark-defaults.gpu-single-node.conf",
        "spark-defaults.gpu-standalone-cluster.conf", "spark-defaults.rapids.conf"}


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_conf_common_invariants(path):
    conf = parse_conf(path)
    header = path.read_text().split("\n\n", 1)[0]
    assert "Verified where" in header, "each file must say what was verified where"
    assert conf["spark.python.worker.reuse"] == "true"
    assert int(conf["spark.sql.execution.arrow.maxRecordsPerBatch"]) > 0
    assert 0 < int(conf["spark.sql.execution.arrow.maxBytesPerBatch"]) < INT_MAX
    assert conf["spark.sql.execution.arrow.useLargeVarTypes"] == "false"
    assert conf["spark.sql.sources.partitionOverwriteMode"] == "dynamic"
    assert conf["spark.executorEnv.TOKENIZERS_PARALLELISM"] in {"true", "false"}


def test_local_cpu_conf_has_no_gpu_resources():
    # In local[N] mode any task GPU amount makes the job hang at (0 + 0).
    conf = parse_conf(CONF / "spark-defaults.local-cpu.conf")
    assert conf["spark.master"].startswith("local")
    assert not [k for k in conf if ".resource.gpu." in k]


@pytest.mark.parametrize("path", GPU_CONF_FILES, ids=lambda p: p.name)
def test_gpu_conf_invariants(path):
    conf = parse_conf(path)
    amount = float(conf["spark.task.resource.gpu.amount"])
    assert amount > 0 and (amount.is_integer() or amount <= 0.5), "Spark needs a whole number or <= 0.5"
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert "spark.executor.pyspark.memory" not in conf  # RLIMIT_AS breaks CUDA initialisation
    offered = set(re.findall(r"^#\s+spark\.task\.resource\.gpu\.amount\s+([0-9.]+)", path.read_text(), re.M))
    offered.add(conf["spark.task.resource.gpu.amount"])
    assert {"1", "0.5"} <= offered, "offer one task per GPU and several (0.5) as alternatives"
    for key in ("spark.executor.resource.gpu.discoveryScript", "spark.worker.resource.gpu.discoveryScript"):
        if key in conf:
            assert Path(conf[key]).name == DISCOVERY.name


def test_rapids_conf_shares_the_gpu_with_pytorch():
    conf = parse_conf(CONF / "spark-defaults.rapids.conf")
    assert "com.nvidia.spark.SQLPlugin" in conf["spark.plugins"].split(",")
    assert conf["spark.rapids.sql.enabled"] == "true"
    pool = conf["spark.rapids.memory.gpu.pool"].upper()
    assert pool == "NONE" or float(conf["spark.rapids.memory.gpu.allocFraction"]) <= 0.5
    assert conf["spark.rapids.sql.python.gpu.enabled"] == "false"
    assert "spark.rapids.python.concurrentPythonWorkers" not in conf
    assert int(conf["spark.rapids.sql.concurrentGpuTasks"]) >= 1
    assert "JSON *writing* is CPU only" in (CONF / "spark-defaults.rapids.conf").read_text()


# --- Spark accepts the files (slow: real spark-submit) ---------------------------------------------------

PROBE = """
import json, os, sys
from pyspark import TaskContext
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
def probe(_):
    res = TaskContext.get().resources()
    gpu = res["gpu"].addresses if "gpu" in res else None
    return (gpu, os.environ.get("TOKENIZERS_PARALLELISM"))
rows = spark.sparkContext.parallelize(range(4), 4).map(probe).collect()
keys = ["spark.sql.sources.partitionOverwriteMode", "spark.sql.execution.arrow.maxRecordsPerBatch",
        "spark.sql.execution.arrow.maxBytesPerBatch", "spark.task.resource.gpu.amount"]
conf = {k: spark.conf.get(k, None) for k in keys}
with open(sys.argv[1], "w") as f:
    json.dump({"rows": rows, "conf": conf}, f)
spark.stop()
"""


def spark_submit(tmp_path: Path, args: list[str]) -> dict:
    """Run PROBE with spark-submit from the pip pyspark and return what it wrote."""
    import pyspark

    home = Path(pyspark.__file__).parent
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = tmp_path / "result.json"
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARKCURATE_FAKE_GPUS": "2"}
    proc = subprocess.run([str(home / "bin" / "spark-submit"), *args, str(probe), str(result)],
                          env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.mark.slow
def test_spark_submit_accepts_the_local_cpu_conf(tmp_path):
    out = spark_submit(tmp_path, ["--master", "local[2]", "--properties-file",
                                  str(CONF / "spark-defaults.local-cpu.conf")])
    assert out["conf"]["spark.sql.sources.partitionOverwriteMode"] == "dynamic"
    assert out["conf"]["spark.sql.execution.arrow.maxRecordsPerBatch"] == "4096"
    assert all(gpu is None and env == "false" for gpu, env in out["rows"])


@pytest.mark.slow
def test_standalone_gpu_conf_hands_tasks_gpu_addresses_in_local_cluster(tmp_path):
    # The cluster file as shipped, with only what a 2-core CPU machine needs changed: fake discovery,
    # two fake GPUs per worker, small executors (one core each -> one executor per GPU).
    fake = str(FAKE)
    out = spark_submit(tmp_path, [
        "--master", "local-cluster[1,2,1024]",
        "--properties-file", str(CONF / "spark-defaults.gpu-standalone-cluster.conf"),
        "--conf", "spark.worker.resource.gpu.amount=2",
        "--conf", f"spark.worker.resource.gpu.discoveryScript={fake}",
        "--conf", f"spark.executor.resource.gpu.discoveryScript={fake}",
        "--conf", "spark.executor.cores=1",
        "--conf", "spark.executor.memory=512m",
        "--conf", "spark.speculation=false",
    ])
    assert out["conf"]["spark.task.resource.gpu.amount"] == "0.25"
    addresses = [gpu for gpu, _ in out["rows"]]
    assert all(isinstance(a, list) and len(a) == 1 and a[0] in {"0", "1"} for a in addresses), addresses
    assert all(env == "false" for _, env in out["rows"])
