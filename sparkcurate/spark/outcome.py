"""Every record's outcome after classification: kept, filtered or rejected (the status column), and the rows
each outcome goes to: the output (kept, internal columns dropped) or ``OUT/_rejects`` (rejected, with reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sparkcurate.io.sources.base import CORRUPT_COLUMN, POSITION_COLUMN, RAW_LINE_COLUMN, REASON_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from sparkcurate.spark.stage import StageClassifier

STATUS_COLUMN = "_sparkcurate_status"


def classified_rows(df: "DataFrame", classifiers: Sequence["StageClassifier"], counter=None,
                    device_log=None, task_stats=None) -> "DataFrame":
    """Every record with its predictions (null for rejects) and a status: kept, filtered or rejected."""
    from pyspark.sql import functions as F

    from sparkcurate.spark.stage import classify_dataframe, filter_expression

    out = classify_dataframe(df, classifiers, counter, skip_column=REASON_COLUMN, device_log=device_log,
                             task_stats=task_stats)
    keep = filter_expression(classifiers)
    status = (F.when(F.col(REASON_COLUMN).isNotNull(), F.lit("rejected"))
              .when(F.coalesce(keep, F.lit(False)) if keep is not None else F.lit(True), F.lit("kept"))
              .otherwise(F.lit("filtered")))
    return out.withColumn(STATUS_COLUMN, status)


def without_line_copies(rows: "DataFrame", text_fields: Sequence[str], attributes: bool) -> "DataFrame":
    """``rows`` less what a source read line by line holds twice, before they are persisted: the text (it is in
    the line, which the output writes) and, for attribute files, the line itself (they write no record; the
    rejects keep theirs in ``_corrupt_record``). Other rows are returned as they are."""
    if RAW_LINE_COLUMN not in rows.columns:
        return rows
    return rows.drop(RAW_LINE_COLUMN, *text_fields) if attributes else rows.drop(*text_fields)


def internal_columns(df: "DataFrame") -> list[str]:
    from sparkcurate.spark.stage import CONFIDENCE_PREFIX

    return [c for c in df.columns
            if c in (STATUS_COLUMN, REASON_COLUMN, CORRUPT_COLUMN, POSITION_COLUMN)
            or c.startswith(CONFIDENCE_PREFIX)]


def output_rows(rows: "DataFrame", classifiers) -> "DataFrame":
    from pyspark.sql import functions as F

    kept = rows.filter(F.col(STATUS_COLUMN) == "kept")
    return kept.drop(*internal_columns(rows))


def rejected_rows(rows: "DataFrame", classifiers, file_name_column: str) -> "DataFrame":
    """One row per rejected record: ``reason``, ``file_name`` and the original ``line`` (input that could not be
    parsed, and every reject of a source read line by line) or ``record`` (the parsed record's own fields)."""
    from pyspark.sql import functions as F

    rejected = rows.filter(F.col(STATUS_COLUMN) == "rejected")
    data_cols = [c for c in rows.columns
                 if c not in internal_columns(rows) and c not in (file_name_column, RAW_LINE_COLUMN)
                 and c not in _output_column_names(classifiers)]
    # (rows read line by line keep no parsed field here: their rejects all carry the line)
    record = (F.when(F.col(CORRUPT_COLUMN).isNull(), F.struct(*[F.col(c) for c in data_cols])) if data_cols
              else F.lit(None).cast("string"))
    return rejected.select(
        F.col(REASON_COLUMN).alias("reason"),
        F.col(file_name_column).alias("file_name"),
        F.col(CORRUPT_COLUMN).alias("line"),
        record.alias("record"),
    )


def _output_column_names(classifiers) -> set[str]:
    from sparkcurate.spark.stage import output_fields

    return {name for name, _ in output_fields(classifiers)}
