"""The house rules of the package, read from its source: no import cycle, and no import from a lower layer to a
higher one, so a reader can take the layers from the top down (and a lower one can be used and tested alone).

The layers, highest first (a module may import its own layer and any lower one):

    sparkcurate (the package's exports), cli   entry points
    pipeline                                   the job's story
    report                                     counts, summary, progress line, HTML report
    classifiers                                declarations; their DataFrame API runs the Spark stage
    io, spark                                  reading and writing with Spark; session, the stage, planning
    models                                     loading artifacts, heads, causal LM + adapters
    engine                                     texts -> outputs on a device; knows nothing of Spark or models

``report`` sits under pipeline (its summary counts the job's rows with Spark and reads the listing); ``data`` is a
leaf: any layer may use it, it imports nothing of the package. Why classifiers
sit above spark: ``spark.stage`` runs anything shaped like a classifier (``stage.StageClassifier``) and imports
nothing from ``classifiers``, while a classifier's ``__call__(df)`` (NeMo Curator's API) runs that stage.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sparkcurate"

LAYERS: list[set[str]] = [
    {"sparkcurate", "cli"},
    {"pipeline", "groups"},  # groups: the commit groups pipeline.run does
    {"report"},  # report.summary counts the job's rows (Spark) and reads its listing (io)
    {"classifiers"},
    {"io", "spark"},
    {"models"},
    {"engine"},
]
LEAVES = {"data"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel.with_suffix(".py")).exists() or (ROOT / rel / "__init__.py").exists()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, type_checking: bool = False) -> set[str]:
    """The package's modules that ``path`` imports, at module level or inside functions; imports under
    ``if TYPE_CHECKING:`` only with ``type_checking`` (they never run, but they are a dependency of the code)."""
    me = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "sparkcurate")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = me.split(".") if is_package else me.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source.split(".")[0] == "sparkcurate":
                    submodules = {f"{source}.{a.name}" for a in child.names if is_module(f"{source}.{a.name}")}
                    found.update(submodules)
                    if len(submodules) < len(child.names):  # names defined in the source module itself
                        found.add(source)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    found.discard(me)
    return found


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, type_checking) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def rank_of(layer: str) -> int:
    for i, members in enumerate(LAYERS):
        if layer in members:
            return i
    raise AssertionError(f"{layer!r} is in no layer: add it to LAYERS or LEAVES in {__file__}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
    """The checks below are only as good as the parser: it must see imports inside functions and relative ones,
    and skip TYPE_CHECKING blocks."""
    graph = import_graph()
    assert "sparkcurate.spark.stage" in graph["sparkcurate.classifiers.base"]  # inside __call__
    assert "sparkcurate.engine.runner" in graph["sparkcurate.spark.stage"]  # inside the partition function
    assert "sparkcurate.classifiers.base" not in graph["sparkcurate.pipeline"]  # under TYPE_CHECKING only
    assert "sparkcurate.classifiers.base" in import_graph(type_checking=True)["sparkcurate.pipeline"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    """Type-only imports count too: a lower layer does not even name a higher one's classes."""
    wrong = []
    for module, targets in import_graph(type_checking=True).items():
        source = layer_of(module)
        for target in sorted(targets):
            dest = layer_of(target)
            if source == dest or dest in LEAVES:
                continue
            if source in LEAVES:
                wrong.append(f"{module} -> {target} (a leaf imports nothing of the package)")
            elif rank_of(source) > rank_of(dest):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_classifier_families_override_hooks_not_the_templates():
    """Pre-flight, loading and the DataFrame API keep one order for every classifier: families change the steps
    (``check_weights``, ``load_model``, ``make_engine``...), never the whole method."""
    from sparkcurate.classifiers import registry
    from sparkcurate.classifiers.base import DistributedDataClassifier as Base

    templates = ("preflight", "ensure_preflight", "load_engine", "__call__")
    overridden = sorted(f"{cls.__name__}.{name}" for cls in registry.REGISTRY.values() for name in templates
                        if getattr(cls, name) is not getattr(Base, name))
    assert overridden == []


def test_every_registered_classifier_and_the_job_api_are_exported():
    import sparkcurate
    from sparkcurate.classifiers import registry

    exported = {getattr(sparkcurate, name) for name in sparkcurate.__all__}
    missing = sorted(cls.__name__ for cls in registry.REGISTRY.values() if cls not in exported)
    assert missing == []
    assert len(registry.REGISTRY) == 11
    from sparkcurate.pipeline import JobOptions, run

    assert {"run", "JobOptions"} <= set(sparkcurate.__all__)
    assert sparkcurate.run is run and sparkcurate.JobOptions is JobOptions
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        sparkcurate.nothing_here  # noqa: B018


def test_importing_the_package_loads_no_heavy_library():
    code = ("import sys, sparkcurate; print(sorted(m for m in ('torch', 'transformers', 'pyspark') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


def layer_graph(graph: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Which layer imports which (for reading, e.g. ``python -m tests.test_architecture``)."""
    out: dict[str, set[str]] = defaultdict(set)
    for module, targets in (graph or import_graph()).items():
        for target in targets:
            if layer_of(module) != layer_of(target):
                out[layer_of(module)].add(layer_of(target))
    return dict(out)


if __name__ == "__main__":  # pragma: no cover
    for source, targets in sorted(layer_graph().items()):
        print(f"{source:12s} -> {', '.join(sorted(targets))}")
