"""Environment switches of the engine's optional kernels, read one way everywhere."""

from __future__ import annotations

import os


def env_mode(variable: str, modes: tuple[str, ...], default: str = "auto") -> str:
    """The value of environment variable ``variable``, lower-cased (unset or blank: ``default``).

    A value outside ``modes`` is an error naming the variable, rather than a silent fallback: a typo in a
    switch would otherwise run a different kernel than the user asked for.
    """
    raw = os.environ.get(variable, default).strip().lower() or default
    if raw not in modes:
        raise ValueError(f"{variable} must be one of {modes}, got {raw!r}")
    return raw
