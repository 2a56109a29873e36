"""Length-sorted micro-batches under a token budget, and restoring results to input order.

Sorting inside a batch means each micro-batch pads to a length close to its own documents, so padded tokens (pure
waste) stay few; the token budget keeps memory flat whatever the length mix: many short documents or a few long
ones per micro-batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def plan_microbatches(lengths: np.ndarray, token_budget: int, max_batch_size: int,
                      padded: bool = True) -> list[np.ndarray]:
    """Indices of each micro-batch, longest documents first (an out-of-memory shows up at once, not at the end).

    ``padded``: the budget counts ``rows x longest`` (padded forward); otherwise the sum of lengths (packed).
    """
    if len(lengths) == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        if padded:
            rows = max(1, min(max_batch_size, token_budget // longest))
            stop = min(n, start + rows)
        else:
            stop = start
            used = 0
            while stop < n and stop - start < max_batch_size:
                nxt = max(int(lengths[order[stop]]), 1)
                if stop > start and used + nxt > token_budget:
                    break
                used += nxt
                stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def restore_order(chunks: list[tuple[np.ndarray, np.ndarray]], n: int, width: int) -> np.ndarray:
    """Scatter per-micro-batch results (indices, values) back into one array in input order."""
    out = np.empty((n, width), dtype=np.float32)
    written = np.zeros(n, dtype=bool)
    for idx, values in chunks:
        out[idx] = values
        written[idx] = True
    if not written.all():
        raise RuntimeError(f"internal error: {int((~written).sum())} documents got no result")
    return out


def split_in_half(idx: np.ndarray) -> Iterator[np.ndarray]:
    """Two halves of a micro-batch, for the out-of-memory back-off."""
    mid = len(idx) // 2
    yield idx[:mid]
    yield idx[mid:]
