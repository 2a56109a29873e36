"""Attribute files (``--output-mode attributes``): one small row per input record, its key and its predictions,
written beside the data instead of a copy of it, in the same layout (by ``file_name``), so a join on the key gives
every input record exactly one attribute row.

The key, chosen per run (``attribute_key``) and named in the summary:

- ``id`` (``--id-field``) when every record has one and no two records of a file share it (the join is on
  ``file_name`` and ``id``); the id is written as text, as the JSON line holds it (``7`` gives ``"7"``);
- otherwise ``record``: the record's position in its file, 1, 2, ... in file order, counting records (a JSONL
  file's non-blank lines), from the source's ``POSITION_COLUMN``.

Rejected records get a row too, with null predictions and their ``reason`` (null for classified records).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from sparkcurate.io.sources.base import POSITION_COLUMN, REASON_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from sparkcurate.spark.stage import StageClassifier

log = logging.getLogger(__name__)

RECORD_KEY = "record"
ATTRIBUTE_REASON = "reason"


def attribute_key(rows: "DataFrame", id_field: str | None, file_name_column: str) -> str:
    """``id_field`` when it is a key of ``rows`` (never null, unique within each file), else ``RECORD_KEY``.
    One aggregation over the (persisted) rows; skipped when the rows have no such column."""
    from pyspark.sql import functions as F

    if not id_field or id_field not in rows.columns:
        return RECORD_KEY
    ident = F.col(id_field)
    clashes = (rows.select(F.col(file_name_column).alias("f"), ident.alias("k")).groupBy("f", "k").count()
               .where(F.col("k").isNull() | (F.col("count") > 1)).limit(1).collect())
    if clashes:
        row = clashes[0]
        why = "a record has none" if row["k"] is None else f"{row['k']!r} is used {row['count']} times"
        log.info("attribute key: the record's position in its file (%r is not a key: %s, in %s)", id_field, why,
                 row["f"])
        return RECORD_KEY
    return id_field


def attribute_rows(rows: "DataFrame", classifiers: Sequence["StageClassifier"], file_name_column: str,
                   key: str) -> "DataFrame":
    """One row per record of ``rows`` (kept, filtered and rejected): ``file_name_column``, ``key``, each
    classifier's output columns and ``reason``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from sparkcurate.spark.stage import output_fields

    outputs = [name for name, _ in output_fields(classifiers, confidence=False)]
    clash = sorted({key, ATTRIBUTE_REASON, file_name_column} & set(outputs))
    if clash:
        raise ValueError(f"a classifier writes column(s) {clash}, which attribute files use for the key or the "
                         "reason: set pred_column/prob_column")
    if key == RECORD_KEY:
        if POSITION_COLUMN not in rows.columns:
            raise ValueError("attribute files need each record's position in its file or a unique id field: this "
                             "input format gives no position, and --id-field is not a key of every record")
        order = Window.partitionBy(file_name_column).orderBy(F.col(POSITION_COLUMN))
        key_column = F.row_number().over(order).alias(RECORD_KEY)
    else:
        key_column = F.col(key).cast("string").alias(key)
    return rows.select(F.col(file_name_column), key_column, *[F.col(c) for c in outputs],
                       F.col(REASON_COLUMN).alias(ATTRIBUTE_REASON))
