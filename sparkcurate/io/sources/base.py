"""What an input format provides to the job (``sparkcurate.pipeline``): one small ``Source`` class per format.

A source lists its files, reads them with an explicit schema into a DataFrame that the rest of the job
understands, and explains its read failures. The DataFrame has, besides the record's own fields:

- the text field, as a string;
- ``file_name`` (the column the job names): the record's file relative to the input root;
- ``_corrupt_record``: the raw record where it could not be parsed (kept for ``OUT/_rejects``), else null;
- ``_reject_reason``: why the record cannot be classified (``malformed_json``, ``text_missing``, ...), else null.

Two optional columns, asked for by the job through the source's attributes (a source that cannot give one
ignores the ask; ``keep_lines`` is for line formats only):

- ``RAW_LINE_COLUMN`` (``keep_lines``): the record's own line, for a sink that writes it back byte for byte
  (``sparkcurate.io.sinks.jsonl``); its column metadata ``fields_in_line`` names the columns parsed from it;
- ``POSITION_COLUMN`` (``record_positions``): a value that sorts a file's records in file order, for attribute
  files (``with_record_positions`` gives it to any Spark file source).

A new format is a subclass in its own module (``name``, ``suffixes``, ``label``, ``read``; listing, splitting,
``file_name`` and failure explanation come from here) plus one line in ``sparkcurate/io/sources/__init__.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sparkcurate.io.failures import explain_failure
from sparkcurate.io.listing import InputFile, InputListing, list_input_files, splittable

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

CORRUPT_COLUMN = "_corrupt_record"
REASON_COLUMN = "_reject_reason"
RAW_LINE_COLUMN = "_sparkcurate_line"
POSITION_COLUMN = "_sparkcurate_position"
# Characters that count as blank: whitespace, separators, format (zero-width, BOM) and control characters.
BLANK_PATTERN = r"^[\s\p{Z}\p{Cf}\p{Cc}]*$"


class Source:
    """One input format. Subclasses set ``name`` (the ``--input-format`` value), ``suffixes`` (the file names
    a directory input reads), ``label`` (how messages name the files) and implement ``read``."""

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""
    # Set by the job before ``read`` (see the module docstring): keep each record's raw line; add its position in
    # its file; also parse these fields (a record key such as ``id``) where the format parses only what it needs.
    keep_lines: bool = False
    record_positions: bool = False
    key_fields: tuple[str, ...] = ()

    def list_files(self, spark: "SparkSession", path: str) -> InputListing:
        """Every file this source reads under ``path`` (a directory, a file or a glob), with those it skips."""
        return list_input_files(spark, path, self.suffixes, self.label)

    def splittable(self, f: InputFile) -> bool:
        """Whether Spark can cut ``f`` into several tasks (for the split plan)."""
        return splittable(f.file_name)

    def read(self, spark: "SparkSession", listing: InputListing, text_field: str, file_name_column: str,
             schema=None, sampling_ratio: float = 1.0) -> "DataFrame":
        """Every record of the listed files, with the columns the module docstring lists. ``schema`` (a DDL
        string or a StructType) replaces inference; ``sampling_ratio`` is for sources that infer."""
        raise NotImplementedError

    def explain_failure(self, exc: Exception, spark: "SparkSession | None" = None,
                        listing: InputListing | None = None) -> Exception | None:
        """An ``InputError`` naming the file when ``exc`` is Spark failing to read one; None otherwise."""
        return explain_failure(exc, spark, listing)


def text_reject_reason(text_field: str) -> "Column":
    """Why a parsed record's text cannot be classified, or null:

    - ``text_missing``: the text field is missing or null (a key that differs only in case, like TEXT, is not it);
    - ``text_empty``: the text is empty, or only whitespace, zero-width or control characters.
    """
    from pyspark.sql import functions as F

    text = F.col(text_field)
    return F.when(text.isNull(), F.lit("text_missing")).when(text.rlike(BLANK_PATTERN), F.lit("text_empty"))


def with_record_positions(df: "DataFrame") -> "DataFrame":
    """``df`` (a file source's DataFrame, straight from the reader: nothing between) with ``POSITION_COLUMN``:
    (the start of the split the record was read from, the record's index in its task). Why it orders a file's
    records: a split is a contiguous byte range read in order by one task, so within a split the task index grows
    with the position, and splits order by their start. Spark's ``_metadata`` column gives the split start (any
    file source, Spark 3.3 and later); ``monotonically_increasing_id`` the index. Both are fixed once the rows are
    persisted, which the job does before anything reads them twice."""
    from pyspark.sql import functions as F

    position = F.struct(F.col("_metadata.file_block_start").alias("split_start"),
                        F.monotonically_increasing_id().alias("index"))
    return df.withColumn(POSITION_COLUMN, position)
