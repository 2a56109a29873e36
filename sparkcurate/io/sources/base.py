"""What an input format provides to the job (``sparkcurate.pipeline``): one small ``Source`` class per format.

A source lists its files, reads them with an explicit schema into a DataFrame that the rest of the job
understands, and explains its read failures. The DataFrame has, besides the record's own fields:

- the text field, as a string;
- ``file_name`` (the column the job names): the record's file relative to the input root;
- ``CORRUPT_COLUMN``: the raw record where it could not be parsed (kept for ``OUT/_rejects``), else null;
- ``REASON_COLUMN``: why the record cannot be classified (``malformed_json``, ``text_missing``, ...), else null.

Every column the job adds for itself is named in its own namespace (``INTERNAL_PREFIX``), so an input field
called ``_corrupt_record`` or ``_reject_reason`` is an ordinary field, kept like any other. ``read`` calls
``check_input_fields`` as soon as the input's schema is known, before it adds a column: an input field in that
namespace, or named like the file-name column, is refused (``UsageError``) instead of being overwritten.

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

from typing import TYPE_CHECKING, ClassVar, Iterable

from sparkcurate.io.failures import explain_failure
from sparkcurate.io.listing import InputFile, InputListing, list_input_files, splittable

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

# Every column the job adds for itself (here, the status and the hidden confidence columns in spark/) starts with
# this: input fields in the namespace are refused, so an internal column can never overwrite or drop a user's field.
INTERNAL_PREFIX = "__sparkcurate_"
CORRUPT_COLUMN = INTERNAL_PREFIX + "corrupt_record"
REASON_COLUMN = INTERNAL_PREFIX + "reject_reason"
RAW_LINE_COLUMN = INTERNAL_PREFIX + "line"
POSITION_COLUMN = INTERNAL_PREFIX + "position"
# Characters that count as blank: whitespace, separators, format (zero-width, BOM) and control characters.
BLANK_PATTERN = r"^[\s\p{Z}\p{Cf}\p{Cc}]*$"


class UsageError(ValueError):
    """The run was asked for something the input or the arguments cannot give (a field that would clash with a
    column the job writes, an unusable text field, a malformed schema): the command exits 2 with this line."""


def clashing_fields(fields: Iterable[str], reserved: Iterable[str] = ()) -> list[str]:
    """The ``fields`` that a column the job adds would overwrite or drop: those in the job's namespace
    (``INTERNAL_PREFIX``) and those equal to one of ``reserved``. Compared ignoring case, as Spark resolves
    column names by default (``FILE_NAME`` would be replaced by a ``file_name`` column)."""
    taken = {r.lower() for r in reserved}
    return [f for f in fields if f.lower().startswith(INTERNAL_PREFIX) or f.lower() in taken]


def check_input_fields(fields: Iterable[str], reserved: Iterable[str] = (), what: str = "") -> None:
    """Refuse (``UsageError`` naming them) input fields that ``clashing_fields`` finds. Called once the input's
    schema is known and before any column is added: by a source for its own columns (the file-name column and
    the namespace), by the classify stage for the prediction columns (``what`` says which option renames them)."""
    clash = clashing_fields(fields, reserved)
    if clash:
        hint = what or "rename the field(s), or choose another --file-name-column"
        internal = any(f.lower().startswith(INTERNAL_PREFIX) for f in clash)
        note = f" (names starting with {INTERNAL_PREFIX!r} are the job's own)" if internal else ""
        raise UsageError(f"the input has field(s) {clash} named like column(s) the job writes{note}: {hint}")


def check_text_field(text_field: str, file_name_column: str = "file_name") -> None:
    """A ``UsageError`` for a text field the job cannot read: the text must be a top-level field, and a name with
    '.' or '`' would be read by Spark as a path into a nested record (or a quoted name), not as the field; nor can
    it be the column the job writes the file name to."""
    if not text_field or "." in text_field or "`" in text_field:
        raise UsageError(f"--text-field {text_field!r}: the text must be a top-level field named without '.' or "
                         "'`' (nested fields are not supported: flatten the records first)")
    if text_field.lower() == file_name_column.lower() or text_field.lower().startswith(INTERNAL_PREFIX):
        raise UsageError(f"--text-field {text_field!r} names a column the job writes itself (the file-name column "
                         f"or a name starting with {INTERNAL_PREFIX!r})")


def parse_schema(schema):
    """``schema`` (a Spark DDL string, a StructType or None) as a StructType or None; a ``UsageError`` in one
    line when the DDL does not parse or is not a list of fields. Needs a running SparkSession (Spark parses
    DDL in the JVM)."""
    from pyspark.sql import types as T

    if schema is None or isinstance(schema, T.StructType):
        return schema
    try:
        parsed = T._parse_datatype_string(schema)
    except Exception as exc:  # Spark's ParseException: its message spans lines and carries a caret diagram
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--schema {schema!r} is not a Spark DDL schema: {first}") from None
    if not isinstance(parsed, T.StructType):
        raise UsageError(f"--schema {schema!r} is not a list of fields (such as 'text STRING, id BIGINT')")
    return parsed


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

    def resumable(self, listing: InputListing) -> bool:
        """Whether any subset of the listed files can be read on its own, given the whole input's schema as
        ``read``'s ``schema``, and give the same records as in the whole: then the job commits the input in
        groups of files and a re-run reuses the files it committed. A source that is not a set of independent
        files (a catalog table, a Delta snapshot) says False: it is read, and redone, whole."""
        return bool(listing.files)

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
