"""Every record's outcome after classification: kept, filtered or rejected (the status column), and the rows
each outcome goes to: the output (kept, internal columns dropped) or ``OUT/_rejects`` (rejected, with reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sparkcurate.io.sources.base import (CORRUPT_COLUMN, INTERNAL_PREFIX, POSITION_COLUMN, RAW_LINE_COLUMN,
                                         REASON_COLUMN, check_input_fields)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from sparkcurate.spark.stage import StageClassifier

STATUS_COLUMN = INTERNAL_PREFIX + "status"


def classified_rows(df: "DataFrame", classifiers: Sequence["StageClassifier"], counter=None,
                    device_log=None, task_stats=None) -> "DataFrame":
    """Every record with its predictions (null for rejects) and a status: kept, filtered or rejected."""
    from pyspark.sql import functions as F

    from sparkcurate.spark.stage import classify_dataframe, classify_text_columns, filter_expression

    check_output_columns(df, classifiers)
    # A source read line by line holds each record twice (the line and its parsed text): only the text goes to
    # Python then, and the line stays in the JVM (classify_text_columns). Other sources keep mapInArrow, whose
    # hand-off the RAPIDS Accelerator runs on the GPU (docs/rapids.md).
    stage = classify_text_columns if RAW_LINE_COLUMN in df.columns else classify_dataframe
    out = stage(df, classifiers, counter, skip_column=REASON_COLUMN, device_log=device_log, task_stats=task_stats)
    keep = filter_expression(classifiers)
    status = (F.when(F.col(REASON_COLUMN).isNotNull(), F.lit("rejected"))
              .when(F.coalesce(keep, F.lit(False)) if keep is not None else F.lit(True), F.lit("kept"))
              .otherwise(F.lit("filtered")))
    return out.withColumn(STATUS_COLUMN, status)


def without_line_copies(rows: "DataFrame", text_fields: Sequence[str], attributes: bool) -> "DataFrame":
    """``rows`` less what a source read line by line holds twice, before they are persisted: the text (it is in
    the line, which the output writes) and, for attribute files, the line itself (they write no record; the
    rejects keep theirs in ``CORRUPT_COLUMN``). Other rows are returned as they are."""
    if RAW_LINE_COLUMN not in rows.columns:
        return rows
    return rows.drop(RAW_LINE_COLUMN, *text_fields) if attributes else rows.drop(*text_fields)


def check_output_columns(df: "DataFrame", classifiers: Sequence["StageClassifier"]) -> None:
    """Refuse (``UsageError``, the command's exit 2) an input field or the file-name column named like a column the
    classifiers write (a prediction or probability column), before anything is classified: the stage would
    otherwise fail deep in Spark, or the written row would hold only one of the two."""
    from sparkcurate.spark.stage import output_fields

    written = [name for name, _ in output_fields(classifiers, confidence=False)]
    own = {CORRUPT_COLUMN, REASON_COLUMN, RAW_LINE_COLUMN, POSITION_COLUMN}
    check_input_fields([c for c in df.columns if c not in own], written,
                       "choose another --pred-column/--prob-column (or rename the field)")


def internal_columns(df: "DataFrame") -> list[str]:
    """The job's own columns (status, reject reason, corrupt record, confidences, record positions): all in its
    namespace. A source's raw line (``RAW_LINE_COLUMN``) is not one of them: it is the record a line sink
    writes."""
    return [c for c in df.columns if c.startswith(INTERNAL_PREFIX) and c != RAW_LINE_COLUMN]


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
