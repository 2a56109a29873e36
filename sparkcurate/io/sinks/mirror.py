"""The ``mirror`` layout for any file format Spark writes: one output file per input file, under a name the sink
chooses (``Sink.mirror_name``).

How: Spark writes every input's rows in one task (``repartition`` by ``file_name``) into a staging folder,
partitioned by ``file_name``, so each partition directory holds exactly one part file; each is then moved to its
input's name, replacing only that input's earlier output. A failed write leaves the earlier outputs as they were.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Callable
from urllib.parse import unquote

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, DataFrameWriter

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"


def write_mirror_files(df: "DataFrame", out: str, file_name_column: str,
                       save: Callable[["DataFrameWriter", str], None], target_name: Callable[[str], str]) -> list[str]:
    """Write ``df`` as one file per ``file_name`` under ``out``: ``save(writer, path)`` writes the staged folder
    in the format (options set), ``target_name(file_name)`` names the output relative to ``out``. Returns the
    names written; a ``RuntimeError`` when two inputs would share one output name (nothing is moved then)."""
    from pyspark.sql import functions as F

    from sparkcurate.io.fs import HadoopFS

    fs = HadoopFS(df.sparkSession, out)
    staging = f"{STAGING_DIR}/mirror-{uuid.uuid4().hex[:12]}"
    writer = (df.repartition(F.col(file_name_column)).write.mode("overwrite").option("maxRecordsPerFile", 0)
              .partitionBy(file_name_column))
    save(writer, f"{out.rstrip('/')}/{staging}")
    try:
        moves = _planned_moves(fs, staging, target_name)
        for src, target in moves:
            fs.delete(target)
            fs.rename(src, target)
    finally:
        fs.delete(staging)
        if not fs.list(STAGING_DIR):
            fs.delete(STAGING_DIR)
    return sorted(target for _, target in moves)


def _planned_moves(fs, staging: str, target_name: Callable[[str], str]) -> list[tuple[str, str]]:
    """(staged part file, output name) per input, checked before anything moves: one part file per input, and
    no two inputs on one output name."""
    moves: list[tuple[str, str]] = []
    owners: dict[str, str] = {}
    for dirname, is_dir in fs.list(staging):
        if not is_dir or "=" not in dirname:
            continue
        name = unquote(dirname.split("=", 1)[1])
        parts = [p for p, d in fs.list(f"{staging}/{dirname}") if not d and p.startswith("part-")]
        if len(parts) != 1:
            raise RuntimeError(f"expected one part file for {name!r}, found {len(parts)}")
        target = target_name(name)
        if target in owners:
            raise RuntimeError(f"inputs {owners[target]!r} and {name!r} would both be written to {target!r} in the "
                               "mirror layout: rename one, or use --layout partitioned")
        owners[target] = name
        moves.append((f"{staging}/{dirname}/{parts[0]}", target))
    return moves
