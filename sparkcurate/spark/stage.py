"""The Spark stage: ``mapInArrow`` over the DataFrame, one model per Python worker and device, all columns kept
(or, for rows that hold their record twice, as a line and its text, a column-level Arrow UDF that sends only the
text to Python: ``classify_text_columns``).

Only plain values cross to executors (the classifier declarations); each worker loads its models once into a
module-level cache keyed by the classifier's identity and device, and Spark's worker reuse keeps that cache
across tasks. Everything model-related lives in the engine; this module only moves Arrow batches.

A classifier is anything with the ``StageClassifier`` shape (``sparkcurate.classifiers`` provides them): this
module imports nothing from the classifiers, which sit above it and call it from their DataFrame API.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from pyspark.accumulators import AccumulatorParam

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)


class StageColumn(Protocol):
    """A column a classifier adds: its name and kind (string, float, double, int, bool, float_list, string_list)."""

    name: str
    kind: str


class StageClassifier(Protocol):
    """What the stage needs of a classifier: plain values that pickle to executors, and how to load and read it."""

    name: str
    model: str | None
    text_field: str
    device: str
    pred_column: str
    filter_by: Sequence[Any] | None

    def output_columns(self) -> Sequence[StageColumn]: ...

    def cache_key(self) -> str: ...

    def load_engine(self, device: str) -> Any: ...

    def postprocess(self, outputs: "np.ndarray") -> dict[str, Any]: ...

    def confidence(self, outputs: "np.ndarray") -> "np.ndarray | None": ...

CONFIDENCE_PREFIX = "__sparkcurate_conf_"
_ENGINES: dict[tuple[str, str], Any] = {}
_ENGINES_LOCK = threading.Lock()


def confidence_column(classifier: "StageClassifier") -> str:
    """A hidden per-row number (top probability) kept for the run report, dropped before writing."""
    return CONFIDENCE_PREFIX + classifier.name.replace("-", "_")


def spark_type(kind: str):
    """The Spark type of a column kind a classifier can declare (built without a JVM: executors call it too)."""
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "float": T.FloatType(),
        "double": T.DoubleType(),
        "int": T.LongType(),
        "bool": T.BooleanType(),
        "float_list": T.ArrayType(T.FloatType()),
        "string_list": T.ArrayType(T.StringType()),
    }[kind]


def arrow_type(kind: str) -> "pa.DataType":
    """The Arrow type Spark expects back for that kind (derived, so the two can never disagree)."""
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(spark_type(kind))


def output_fields(classifiers: Sequence["StageClassifier"], confidence: bool = True) -> list[tuple[str, str]]:
    """(name, kind) of the columns the stage adds: each classifier's outputs, and with ``confidence`` its hidden
    confidence column."""
    fields: list[tuple[str, str]] = []
    for c in classifiers:
        fields.extend((col.name, col.kind) for col in c.output_columns())
        if confidence:
            fields.append((confidence_column(c), "float"))
    names = [n for n, _ in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two classifiers write the same column(s) {dupes}: set pred_column/prob_column")
    return fields


def classify_dataframe(df: "DataFrame", classifiers: Sequence["StageClassifier"],
                       counter=None, skip_column: str | None = None, device_log=None,
                       task_stats=None, confidence: bool = True) -> "DataFrame":
    """``df`` with every classifier's columns added, rows unchanged.

    ``counter``: an optional Spark accumulator that tasks add their document counts to, for progress display.
    ``skip_column``: rows where this column is not null (e.g. a reject reason) are passed through unclassified.
    ``device_log``: an optional ``device_accumulator`` that records where each task ran.
    ``task_stats``: an optional ``stats_accumulator`` that sums where the tasks' time went (model loads, waiting
    for input, classifying).
    ``confidence``: also add each classifier's hidden confidence column (``confidence_column``), which the
    pipeline counts for the report and drops before writing; the DataFrame API asks for none, so a user's frame
    holds the input's columns and the classifiers' declared outputs only.
    """
    from pyspark.sql import types as T

    fields = _checked_fields(df, classifiers, confidence)
    schema = T.StructType(list(df.schema.fields) + [T.StructField(n, spark_type(k), True) for n, k in fields])
    fn = make_partition_function(list(classifiers), counter, skip_column, device_log, task_stats, confidence)
    return df.mapInArrow(fn, schema)


def _checked_fields(df: "DataFrame", classifiers: Sequence["StageClassifier"], confidence: bool
                    ) -> list[tuple[str, str]]:
    """The columns the stage adds (``output_fields``), after refusing what cannot run: no classifier, an output
    column the input already has, a text field that is not a column."""
    if not classifiers:
        raise ValueError("no classifier given")
    fields = output_fields(classifiers, confidence)
    existing = set(df.columns)
    clash = [n for n, _ in fields if n in existing]
    if clash:
        raise ValueError(f"the input already has column(s) {clash}; choose other output column names")
    for c in classifiers:
        if c.text_field not in existing:
            raise ValueError(f"{c.name}: text field {c.text_field!r} is not a column (columns: {sorted(existing)})")
    return fields


STAGE_STRUCT = "__sparkcurate_stage"


def classify_text_columns(df: "DataFrame", classifiers: Sequence["StageClassifier"], counter=None,
                          skip_column: str | None = None, device_log=None, task_stats=None,
                          confidence: bool = True) -> "DataFrame":
    """``classify_dataframe``'s result (same columns, same rows, same work per batch), with only the text
    field(s) sent to Python.

    Why: ``mapInArrow`` hands every column to Python and takes every column back. For a source read line by line
    (``--jsonl-mode exact``, attribute files) that is the whole line *and* its text, twice each. Here the
    classifiers run as one column-level Arrow UDF (Spark's ``ArrowEvalPython``): its input is the text (null
    where ``skip_column`` is set, so rejects are not classified) and its output one struct of the stage's
    columns; Spark keeps the other columns in the JVM and joins each output batch back to its input rows by
    position. On Spark without ``arrow_udf`` (before 4.1) the same function runs as a pandas iterator UDF.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = _checked_fields(df, classifiers, confidence)
    if STAGE_STRUCT in df.columns:
        raise ValueError(f"the input already has a column {STAGE_STRUCT!r}, which the stage uses")
    text_fields = list(dict.fromkeys(c.text_field for c in classifiers))
    inputs = [F.when(F.col(skip_column).isNull(), F.col(f)) if skip_column else F.col(f) for f in text_fields]
    struct = T.StructType([T.StructField(n, spark_type(k), True) for n, k in fields])
    fn = make_partition_function(list(classifiers), counter, None, device_log, task_stats, confidence)
    udf = column_udf(text_column_function(fn, text_fields, [n for n, _ in fields]), struct)
    out = df.withColumn(STAGE_STRUCT, udf(*inputs))
    return out.select("*", *[F.col(STAGE_STRUCT).getField(n).alias(n) for n, _ in fields]).drop(STAGE_STRUCT)


def text_column_function(classify: Callable[[Iterator["pa.RecordBatch"]], Iterator["pa.RecordBatch"]],
                         text_fields: list[str], names: list[str]
                         ) -> Callable[[Iterator[Any]], Iterator["pa.StructArray"]]:
    """``classify`` (a ``make_partition_function``) as the body of an iterator UDF: the UDF's input arrays
    (one per text field, a tuple when there are several) become batches named by the text fields, and each
    output batch's ``names`` columns one struct array, in order, one per input batch."""

    def classify_arrays(items: Iterator[Any]) -> Iterator["pa.StructArray"]:
        import pyarrow as pa

        def batches() -> Iterator["pa.RecordBatch"]:
            for item in items:
                arrays = item if isinstance(item, tuple) else (item,)
                arrays = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays]
                yield pa.RecordBatch.from_arrays(arrays, names=text_fields)

        for out in classify(batches()):
            yield pa.StructArray.from_arrays([out.column(n) for n in names], names=names)

    return classify_arrays


def column_udf(fn: Callable[[Iterator[Any]], Iterator["pa.StructArray"]], struct, arrow: bool | None = None):
    """``fn`` as an iterator UDF returning ``struct``: an Arrow UDF where Spark has them (``arrow`` None: 4.1
    and later), else a pandas iterator UDF around it (texts in as pandas Series, the struct out as a pandas
    DataFrame: Spark 3.5 and 4.0, and tests of that path with ``arrow=False``)."""
    import warnings

    from pyspark.sql import functions as F
    from pyspark.util import PythonEvalType

    if arrow is None:
        arrow = hasattr(F, "arrow_udf")
    if arrow:
        with warnings.catch_warnings():  # "preferred to specify type hints": the type is given, on purpose
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            return F.arrow_udf(fn, struct, PythonEvalType.SQL_SCALAR_ARROW_ITER_UDF)

    def via_pandas(series: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        def arrays() -> Iterator[Any]:
            for item in series:
                parts = item if isinstance(item, tuple) else (item,)
                yield tuple(pa.Array.from_pandas(p, type=pa.string()) for p in parts)

        for out in fn(arrays()):
            yield pa.Table.from_arrays(out.flatten(), names=[f.name for f in out.type]).to_pandas()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
        return F.pandas_udf(via_pandas, struct, PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF)


class CountsParam(AccumulatorParam):
    """Accumulator of ``{key: count}`` dicts (where tasks ran), merged by adding counts."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:
        for key, n in b.items():
            a[key] = a.get(key, 0) + n
        return a


def device_accumulator(sc):
    """An accumulator that collects ``"<device> (GPU address <a>)" -> tasks`` from the classify stage."""
    return sc.accumulator({}, CountsParam())


class StatsParam(AccumulatorParam):
    """Accumulator of ``{name: number}`` dicts: names ending in ``_max`` keep the largest value, others add up."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:
        for key, value in b.items():
            if key.endswith("_max"):
                a[key] = max(a.get(key, value), value)
            else:
                a[key] = a.get(key, 0) + value
        return a


def stats_accumulator(sc):
    """An accumulator of the classify tasks' time: why a stage is slow (loading, starved of input, or busy)."""
    return sc.accumulator({}, StatsParam())


class TaskClock:
    """Where one classify task's time goes, reported once per task to a ``stats_accumulator``.

    Why: a GPU stage can be slow because models load (per worker), because the input does not arrive fast enough
    (JSON parsing, Arrow transfer, tokenization: ``wait_input_s``) or because the model work itself is slow
    (``classify_s``). The summary shows the sums so a user can tell which.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.load_s = 0.0
        self.wait_input_s = 0.0
        self.classify_s = 0.0
        self.docs = 0

    def timed_input(self, items: Iterator) -> Iterator:
        """``items``, adding the time spent waiting for each one to ``wait_input_s``."""
        while True:
            t0 = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                self.wait_input_s += time.perf_counter() - t0
                return
            self.wait_input_s += time.perf_counter() - t0
            yield item

    def report(self, stats) -> None:
        task_s = time.perf_counter() - self.start
        stats.add({"tasks": 1, "docs": self.docs, "model_load_s": round(self.load_s, 3),
                   "model_load_s_max": round(self.load_s, 3), "wait_input_s": round(self.wait_input_s, 3),
                   "classify_s": round(self.classify_s, 3), "task_s": round(task_s, 3),
                   "task_s_max": round(task_s, 3)})


def make_partition_function(classifiers: list["StageClassifier"], counter=None,
                            skip_column: str | None = None, device_log=None, task_stats=None,
                            confidence: bool = True
                            ) -> Callable[[Iterator["pa.RecordBatch"]], Iterator["pa.RecordBatch"]]:
    """The function Spark runs per partition. It closes over plain values only."""

    def classify_partition(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        from sparkcurate.engine.runner import collect_ahead, prefetch
        from sparkcurate.spark.devices import current_task_device

        clock = TaskClock()
        placed = [(c, *current_task_device(c.device)) for c in classifiers]
        address = placed[-1][2]
        # The models load on a thread while this one reads the first input batch (EngineLoad says why).
        loading = EngineLoad([(c, device) for c, device, _ in placed])
        batches, read_s = read_first(batches)
        engines = list(zip(classifiers, loading.wait()))
        clock.load_s = loading.seconds
        clock.wait_input_s += max(0.0, read_s - loading.seconds)  # the input's wait beyond the load's
        device = placed[-1][1]
        if device_log is not None:
            given = f"GPU address {address}" if address is not None else "no GPU address"
            device_log.add({f"{device} ({given})": 1})

        def prepare(batch: "pa.RecordBatch"):
            # One tokenization per tokenizer and text field, shared by the classifiers using it (smaller limits
            # derived from the larger ones where exact: engine.runner.tokenize_shared).
            from sparkcurate.engine.runner import tokenize_shared

            out: list[Any] = [None] * len(engines)
            for field in dict.fromkeys(c.text_field for c, _ in engines):
                members = [i for i, (c, _) in enumerate(engines) if c.text_field == field]
                mask, texts = valid_texts(batch, field, skip_column)
                for i, tokens in zip(members, tokenize_shared([engines[i][1] for i in members], texts)):
                    out[i] = (mask, tokens)
            return batch, out

        def submit(item):
            batch, prepared = item
            t0 = time.perf_counter()
            submitted = submit_batch(engines, prepared)
            clock.classify_s += time.perf_counter() - t0
            return batch, prepared, submitted

        def collect(item):
            batch, prepared, submitted = item
            t0 = time.perf_counter()
            out = finish_batch(batch, engines, prepared, submitted, confidence)
            clock.classify_s += time.perf_counter() - t0
            clock.docs += batch.num_rows
            return out, len(prepared[0][1])

        depth = max(engine.config.prefetch for _, engine in engines)
        # Each batch's GPU work is queued before the previous batch is finished and handed to Spark.
        for out, classified in collect_ahead(clock.timed_input(prefetch(batches, prepare, depth)), submit, collect):
            yield out
            if counter is not None:
                counter.add(int(classified))
        if task_stats is not None:
            from sparkcurate.engine.kernels.usage import task_counts

            clock.report(task_stats)
            # which kernels each model's engine ran (the summary's "kernels": tasks per value); an engine of
            # another kind (a user's own) may not say
            task_stats.add(task_counts({c.name: engine.active_kernels() for c, engine in engines
                                        if hasattr(engine, "active_kernels")}))

    return classify_partition


class EngineLoad:
    """A task's engines (``worker_engine`` of each classifier, in order), loaded on a background thread.

    Why: a fresh worker's load (imports, CUDA start, weights) takes seconds before its first batch is classified,
    while the JVM is already sending the input; read meanwhile (:func:`read_first`), the first batch's transfer
    and Arrow decoding overlap the load instead of following it, and the JVM is not held up by a full socket.
    An error of the load (a ``ModelArtifactError``, say) is raised by :meth:`wait`, in the task's thread, as
    before.
    """

    def __init__(self, work: Sequence[tuple["StageClassifier", str]]) -> None:
        from sparkcurate.spark.background import Background

        self._load = Background(_load_engines, list(work), name="sparkcurate-load")

    @property
    def seconds(self) -> float:
        """How long the load took (once ``wait`` returned)."""
        return self._load.seconds

    def wait(self) -> list[Any]:
        """The engines, once loaded; the load's error, if it failed."""
        return self._load.result()


def _load_engines(work: list[tuple["StageClassifier", str]]) -> list[Any]:
    return [worker_engine(classifier, device) for classifier, device in work]


def read_first(batches: Iterator[Any]) -> tuple[Iterator[Any], float]:
    """``batches`` unchanged, with its first item already read (while :class:`EngineLoad` works), and the seconds
    that read took. An error of the read is raised when the item would have been, not here."""
    import itertools

    start = time.perf_counter()
    items = iter(batches)
    try:
        first = next(items)
    except StopIteration:
        return iter(()), time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - re-raised in order, after the engines' own errors
        return _raising(exc), time.perf_counter() - start
    return itertools.chain([first], items), time.perf_counter() - start


def _raising(exc: BaseException) -> Iterator[Any]:
    raise exc
    yield  # pragma: no cover - makes this a generator


def worker_engine(classifier: "StageClassifier", device: str):
    """The engine for this classifier and device, loaded once per Python worker and reused across tasks."""
    key = (classifier.cache_key(), device)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            log.info("loading %s (%s) on %s", classifier.name, classifier.model, device)
            engine = classifier.load_engine(device)
            _ENGINES[key] = engine
    return engine


def valid_text_mask(batch: "pa.RecordBatch", column: "pa.Array", skip_column: str | None):
    """Rows to classify: text not null and, when given, ``skip_column`` null. (Empty and blank texts are routed
    to rejects before the stage by the pipeline; a DataFrame API user who passes them gets what the model says.)"""
    import pyarrow.compute as pc

    mask = pc.is_valid(column)
    if skip_column is not None:
        mask = pc.and_(mask, pc.is_null(batch.column(batch.schema.get_field_index(skip_column))))
    return pc.fill_null(mask, False)


def valid_texts(batch: "pa.RecordBatch", text_field: str, skip_column: str | None = None):
    """The rows to classify (mask) and their texts, as Python strings."""
    import pyarrow.compute as pc

    column = batch.column(batch.schema.get_field_index(text_field))
    if not (column.type == "string" or column.type == "large_string"):
        column = pc.cast(column, "string")
    mask = valid_text_mask(batch, column, skip_column)
    return mask, pc.filter(column, mask).to_pylist()


def submit_batch(engines, prepared) -> list:
    """Queue every classifier's forward passes for one batch (``InferenceEngine.submit``)."""
    return [engine.submit(tokens) for (_, engine), (_, tokens) in zip(engines, prepared)]


def finish_batch(batch: "pa.RecordBatch", engines, prepared, submitted: list, confidence: bool = True
                 ) -> "pa.RecordBatch":
    """Wait for a submitted batch's results and append the classifiers' output columns (and, with
    ``confidence``, their confidence columns: the order ``output_fields`` gives)."""
    import numpy as np
    import pyarrow as pa

    arrays = list(batch.columns)
    names = list(batch.schema.names)
    for (classifier, engine), (mask, tokens), handle in zip(engines, prepared, submitted):
        outputs = engine.collect(handle) if len(tokens) else np.empty((0, 0), np.float32)
        values = classifier.postprocess(outputs) if len(tokens) else {}
        valid = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
        for col in classifier.output_columns():
            arrays.append(scatter(values.get(col.name, []), valid, col.kind))
            names.append(col.name)
        if confidence:
            conf = classifier.confidence(outputs) if len(tokens) else None
            arrays.append(scatter(conf if conf is not None else [], valid, "float"))
            names.append(confidence_column(classifier))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def scatter(values, valid, kind: str) -> "pa.Array":
    """Values for the valid rows, nulls elsewhere, as an Arrow array of the column's type."""
    import numpy as np
    import pyarrow as pa

    typ = arrow_type(kind)
    n = len(valid)
    if len(values) == 0 and valid.any():
        return pa.nulls(n, type=typ)  # a classifier that writes no value for this column
    if valid.all():
        if kind == "float_list" and isinstance(values, np.ndarray) and values.ndim == 2:
            # Rows of a 2-D array (probabilities): offsets + one flat buffer, no Python lists.
            offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
            return pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.float32, copy=False).ravel()),
                                            type=typ)
        return pa.array(_as_list(values, kind), type=typ)
    full: list[Any] = [None] * n
    for i, v in zip(np.flatnonzero(valid), _as_list(values, kind)):
        full[i] = v
    return pa.array(full, type=typ)


def _as_list(values, kind: str) -> list:
    import numpy as np

    if kind == "float_list":
        return [np.asarray(v, dtype=np.float32).tolist() for v in values]
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def filter_expression(classifiers: Sequence["StageClassifier"]) -> "Column | None":
    """Rows kept: for each classifier with ``filter_by``, its prediction is one of the listed labels (AND)."""
    from pyspark.sql import functions as F

    cond = None
    for c in classifiers:
        if c.filter_by:
            term = F.col(c.pred_column).isin(list(c.filter_by))
            cond = term if cond is None else cond & term
    return cond
