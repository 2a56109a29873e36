"""Environment switches of the engine's kernels: declared once in :data:`SWITCHES`, read one way (:func:`read`).

Why one reader: a typo in a switch must be an error naming the variable and what it takes, never a silent
fallback that runs a different kernel than the user asked for; and :func:`values` can list every switch in
force for the run's summary (:func:`sparkcurate.engine.kernels.active_kernels`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

#: The GPU attention kernel behind ``attention_impl="kernel"`` (its modes: the GPU rows of the packed forward's
#: back-end table, ``deberta_packed.GPU_KERNELS``).
ATTENTION_KERNEL = "SPARKCURATE_ATTENTION_KERNEL"
#: "off" keeps the Triton tile kernel where the shared-memory (Gluon) one could run.
SMEM_ATTENTION = "SPARKCURATE_SMEM_ATTENTION"
#: The Triton tile kernel's launch config, "BLOCK_M,BLOCK_N,num_warps,num_stages" (auto: per head dimension).
ATTENTION_CONFIG = "SPARKCURATE_ATTENTION_CONFIG"
#: disentangled-flash's launch-config tuning.
DFLASH_TUNING = "SPARKCURATE_DFLASH_TUNING"
#: The fused residual + LayerNorm kernel.
FUSED_NORM = "SPARKCURATE_FUSED_NORM"
#: GELU in the intermediate GEMM's epilogue.
GELU_EPILOGUE = "SPARKCURATE_GELU_EPILOGUE"
#: The DeBERTa head built from this package's own modules, without importing transformers (``models.lean``):
#: auto on CUDA for half-precision packed engines, on everywhere it can (the CPU and fp32 too), or off.
LEAN_LOAD = "SPARKCURATE_LEAN_LOAD"

#: Spellings of on and off that every on/off switch also takes.
_BOOLEAN = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}


def _launch_config_ok(value: str) -> bool:
    """``BLOCK_M,BLOCK_N,num_warps,num_stages`` with BLOCK_M == BLOCK_N one power of two in [16, 128]."""
    try:
        block_m, block_n, _, _ = (int(part) for part in value.split(","))
    except ValueError:
        return False
    return block_m == block_n and 16 <= block_m <= 128 and not block_m & (block_m - 1)


@dataclass(frozen=True)
class Switch:
    """One environment switch: what it steers (for its error message) and the values it takes."""

    variable: str
    what: str
    #: values taken (lower case); empty: any value ``valid`` accepts, described by ``accepts``
    modes: tuple[str, ...] = ()
    default: str = "auto"
    accepts: str = ""
    valid: Callable[[str], bool] | None = None


#: Every switch of the engine's kernels. A kernel with a new switch adds its row here.
SWITCHES: dict[str, Switch] = {s.variable: s for s in (
    Switch(ATTENTION_KERNEL, "the packed attention's GPU kernel", default="triton"),
    Switch(SMEM_ATTENTION, "the shared-memory attention kernel", ("auto", "on", "off")),
    Switch(ATTENTION_CONFIG, "the tile attention kernel's launch config",
           accepts="auto or 'BLOCK_M,BLOCK_N,num_warps,num_stages' with BLOCK_M = BLOCK_N one power of two in "
                   "[16, 128]",
           valid=lambda value: value == "auto" or _launch_config_ok(value)),
    Switch(DFLASH_TUNING, "disentangled-flash's kernel tuning mode", ("auto", "autotune", "heuristic")),
    Switch(FUSED_NORM, "the fused residual + LayerNorm kernel", ("auto", "on", "off")),
    Switch(GELU_EPILOGUE, "GELU in the GEMM epilogue", ("auto", "off")),
    Switch(LEAN_LOAD, "the DeBERTa load without transformers", ("auto", "on", "off")),
)}


def read(variable: str, modes: tuple[str, ...] = ()) -> str:
    """The value of switch ``variable`` in force: the environment's, stripped and lower-cased; unset or blank:
    its default. ``modes`` replaces the switch's own where the caller owns them (the attention kernels)."""
    raw = os.environ.get(variable, "").strip().lower()
    return check(variable, raw, modes) if raw else SWITCHES[variable].default


def check(variable: str, value: str, modes: tuple[str, ...] = ()) -> str:
    """``value`` as switch ``variable`` takes it (on/off spelled 1/0, true/false, yes/no too), else the one error
    every switch gives: the variable, what it takes and what it got."""
    switch = SWITCHES[variable]
    modes = modes or switch.modes
    value = value.strip().lower()
    if modes:
        if "off" in modes:
            value = _BOOLEAN.get(value, value)
        if value in modes:
            return value
        accepts = f"one of {modes}"
    elif switch.valid is None or switch.valid(value):  # no valid(): the caller passes the modes
        return value
    else:
        accepts = switch.accepts
    raise ValueError(f"{variable} must be {accepts}, got {value!r} ({switch.what})")


def values() -> dict[str, str]:
    """Every switch's value in force (a bad one reported as such, not raised: this is for reports)."""
    out = {}
    for variable in SWITCHES:
        try:
            out[variable] = read(variable)
        except ValueError:
            out[variable] = f"invalid: {os.environ.get(variable, '')!r}"
    return out


def triton_interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET``, Triton's own variable)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")
