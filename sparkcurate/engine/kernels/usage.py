"""Which kernels the engine actually ran, and why not the preferred one: recorded where each choice is made.

Why: the switches say what was asked for, not what ran. A Hopper-only kernel falls back on another GPU, a kernel
that does not compile with the installed Triton falls back at its first launch, a model the packed forward cannot
take runs padded. Each such choice is :func:`record`-ed where it is made; an engine collects its own choices
(:func:`recording`, :meth:`sparkcurate.engine.runner.InferenceEngine.active_kernels`) and the process keeps the
latest of all of them (:func:`active_kernels`). Values are plain strings, so the reports travel through Spark
accumulators (:func:`task_counts`) into the run's summary (:func:`split_task_counts`).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Mapping

from sparkcurate.engine.kernels import switches

#: The choices of the engine working in this context (set by :func:`recording`); None outside any engine.
_CURRENT: ContextVar[dict[str, str] | None] = ContextVar("sparkcurate_kernel_usage", default=None)
#: The latest choices of every engine in this process.
_PROCESS: dict[str, str] = {}
#: Prefix of the accumulator keys made by :func:`task_counts`; ``|`` separates model, choice and value.
COUNT_PREFIX = "kernels|"


def record(choice: str, value: str | None) -> None:
    """Note that ``choice`` (say "attention") was made as ``value`` (None: forget an earlier note, e.g. a
    fallback reason that no longer applies)."""
    current = _CURRENT.get()
    for target in (_PROCESS, current) if current is not None else (_PROCESS,):
        if value is None:
            target.pop(choice, None)
        else:
            target[choice] = str(value)


@contextmanager
def recording(into: dict[str, str]) -> Iterator[dict[str, str]]:
    """Record the choices made inside this block into ``into`` too (an engine's own record)."""
    token = _CURRENT.set(into)
    try:
        yield into
    finally:
        _CURRENT.reset(token)


def active_kernels(recorded: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every switch in force (``SPARKCURATE_*``) and the choices ``recorded`` (default: this process's latest),
    as a plain dict: "precision", "forward" (packed/padded) and "forward_reason", "attention" (the back-end),
    "attention_shear" / "attention_fallback" (the tile kernel), "attention_tuning" (disentangled-flash),
    "fused_norm" and "gelu_epilogue" (on/off), as far as the engine got to them."""
    return {**switches.values(), **dict(_PROCESS if recorded is None else recorded)}


def reset() -> None:
    """Forget this process's record (tests)."""
    _PROCESS.clear()


def task_counts(reports: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """``{model name: active_kernels()}`` as ``{"kernels|<model>|<choice>|<value>": 1}``, for a summing
    accumulator: added once per task, the sums say how many tasks ran with each value."""
    return {f"{COUNT_PREFIX}{model}|{choice}|{value}": 1
            for model, report in reports.items() for choice, value in report.items()}


def split_task_counts(stats: Mapping[str, float]) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, float]]:
    """The kernel counts of :func:`task_counts` in ``stats`` as ``{model: {choice: {value: tasks}}}``, and the
    other entries of ``stats`` as they were."""
    kernels: dict[str, dict[str, dict[str, int]]] = {}
    rest: dict[str, float] = {}
    for key, count in stats.items():
        if not key.startswith(COUNT_PREFIX):
            rest[key] = count
            continue
        model, choice, value = key[len(COUNT_PREFIX):].split("|", 2)
        kernels.setdefault(model, {}).setdefault(choice, {})[value] = int(count)
    return kernels, rest
