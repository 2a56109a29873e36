"""What an input format provides to the job (``sparkcurate.pipeline``): one small ``Source`` class per format.

A source lists its files, reads them with an explicit schema into a DataFrame that the rest of the job
understands, and explains its read failures. The DataFrame has, besides the record's own fields:

- the text field, as a string;
- ``file_name`` (the column the job names): the record's file relative to the input root;
- ``_corrupt_record``: the raw record where it could not be parsed (kept for ``OUT/_rejects``), else null;
- ``_reject_reason``: why the record cannot be classified (``malformed_json``, ``text_missing``, ...), else null.

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
# Characters that count as blank: whitespace, separators, format (zero-width, BOM) and control characters.
BLANK_PATTERN = r"^[\s\p{Z}\p{Cf}\p{Cc}]*$"


class Source:
    """One input format. Subclasses set ``name`` (the ``--input-format`` value), ``suffixes`` (the file names
    a directory input reads), ``label`` (how messages name the files) and implement ``read``."""

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""

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
