"""``DistributedDataClassifier``: what a classifier *is* — model format, limits, labels, post-processing.

A classifier instance holds plain values only, so it can be pickled to executors; the model is loaded there, once
per Python worker and device (``load_engine``), never shipped. Subclasses are small declarations: class-level
defaults plus, where the format differs, ``build_module`` / ``postprocess``.

``preflight`` and ``load_engine`` are templates: they fix the order of the steps (artifacts found, config read,
labels resolved, weights checked, tokenizer loaded, ``filter_by`` checked, fingerprint taken; on the executor:
the same artifacts, model and tokenizer loaded, engine built) and call small hooks that a family overrides where
its format differs: ``extra_dirs``, ``check_weights``, ``preflight_details``, ``load_model``, ``make_engine``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from sparkcurate.models.loading import (
    LoadOptions,
    ModelArtifactError,
    backbone_config_dict,
    build_backbone_config,
    check_remote_code,
    checkpoint_shapes,
    compare_keys,
    expected_shapes,
    labels_from_config,
    load_strict,
    load_tokenizer,
    read_json,
    resolve_model_dir,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from sparkcurate.engine.runner import InferenceEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputColumn:
    """A column a classifier adds. ``kind``: string, float, int, bool, float_list."""

    name: str
    kind: str


@dataclass
class DistributedDataClassifier:
    """Base of every classifier. Call it on a DataFrame: ``DomainClassifier(model=..., filter_by=[...])(df)``.

    Arguments (as NeMo Curator's): ``model`` (hub id, local directory or object-store URI; default the published
    model), ``filter_by`` (keep rows whose label is listed), ``text_field``, ``pred_column``, ``prob_column``
    (the probability vector, ordered like ``labels``), ``max_chars`` (character cut before tokenizing),
    ``max_tokens``, ``batch_size`` (documents per micro-batch at most), ``device`` (auto|cuda|cpu); and:
    ``revision`` (hub revision to pin), ``labels`` (for old configs without them), ``token_budget``,
    ``precision`` (auto|fp32|bf16|fp16|fp16-split), ``packed`` (auto|on|off), ``allow_pickle``, ``trust_remote_code``,
    ``cache_dir``.
    """

    model: str | None = None
    filter_by: Sequence[str] | None = None
    text_field: str = "text"
    pred_column: str | None = None
    prob_column: str | None = None
    max_chars: int | None = None
    max_tokens: int | None = None
    batch_size: int = 256
    device: str = "auto"
    revision: str | None = None
    labels: Sequence[str] | None = None
    token_budget: int | None = None
    precision: str = "auto"
    packed: str = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    cache_dir: str | None = None
    # Internal state, set by ``preflight`` on the driver (not arguments: ``--param`` cannot set them). It travels
    # with the instance so executors check they load the very same artifacts.
    model_fingerprint: str | None = field(default=None, init=False, repr=False)
    preflight_info: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    # --- the declaration: subclasses override these ---
    name: ClassVar[str] = "custom"
    description: ClassVar[str] = "a user-defined classifier"
    default_model: ClassVar[str | None] = None
    default_pred_column: ClassVar[str] = "pred"
    default_prob_column: ClassVar[str | None] = None
    default_max_chars: ClassVar[int | None] = None
    default_max_tokens: ClassVar[int] = 512
    supports_filter: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.model = self.model or self.default_model
        if not self.model:
            raise ValueError(f"{type(self).__name__} needs model= (a hub id, a local directory or a URI)")
        self.pred_column = self.pred_column or self.default_pred_column
        if self.prob_column is None:
            self.prob_column = self.default_prob_column
        self.max_chars = self.max_chars if self.max_chars is not None else self.default_max_chars
        self.max_tokens = self.max_tokens or self.default_max_tokens
        if isinstance(self.filter_by, str):
            self.filter_by = [self.filter_by]
        if self.filter_by is not None:
            self.filter_by = list(self.filter_by)
            if not self.supports_filter:
                raise ValueError(f"{self.name} does not support filter_by")
        if self.labels is not None:
            self.labels = list(self.labels)
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu; got {self.device!r}")
        if self.batch_size < 1 or self.max_tokens < 1 or (self.max_chars is not None and self.max_chars < 1):
            raise ValueError("batch_size, max_tokens and max_chars must be positive")

    # ----------------------------------------------------------------------------------------------------
    # Options and identity
    # ----------------------------------------------------------------------------------------------------

    @property
    def load_options(self) -> LoadOptions:
        return LoadOptions(self.revision, self.cache_dir, self.allow_pickle, self.trust_remote_code)

    def engine_config(self):
        from sparkcurate.engine.runner import EngineConfig

        return EngineConfig(max_tokens=self.max_tokens, max_chars=self.max_chars, token_budget=self.token_budget,
                            max_batch_size=self.batch_size, precision=self.precision, packed=self.packed)

    def cache_key(self) -> str:
        """Identity of the loaded model in a worker's cache: same key, same weights and settings."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "preflight_info"}
        payload = json.dumps(fields, sort_keys=True, default=str)
        return f"{type(self).__module__}.{type(self).__qualname__}:{hashlib.sha256(payload.encode()).hexdigest()}"

    # ----------------------------------------------------------------------------------------------------
    # Declaration hooks
    # ----------------------------------------------------------------------------------------------------

    def resolve_dir(self) -> Path:
        """The local directory of the model on this node (downloaded or copied into a node-local cache)."""
        return resolve_model_dir(self.model, self.load_options)

    def read_config(self, model_dir: Path) -> dict[str, Any]:
        config = read_json(model_dir / "config.json")
        check_remote_code(config, model_dir, self.load_options)
        return config

    def resolve_labels(self, config: dict[str, Any]) -> list[str]:
        """Labels ordered by id: from the config, or from the caller for old configs that have none."""
        found = labels_from_config(config)
        if self.labels is not None:
            if found is not None and list(found) != list(self.labels):
                raise ModelArtifactError(
                    f"labels given ({self.labels}) differ from the model's label2id order ({found})"
                )
            return list(self.labels)
        if found is None:
            raise ModelArtifactError(f"{self.name}: config.json has no label2id/id2label: pass labels=[...]")
        return found

    def build_module(self, model_dir: Path, config: dict[str, Any]):
        """The torch module with no weights loaded. Default: the published DeBERTa head."""
        from sparkcurate.models.heads import ClsHeadModel

        backbone = build_backbone_config(backbone_config_dict(config, model_dir, self.load_options))
        labels = self.resolve_labels(config)
        return ClsHeadModel(backbone, len(labels), float(config.get("fc_dropout", 0.2)))

    def output_columns(self) -> list[OutputColumn]:
        cols = [OutputColumn(self.pred_column, "string")]
        if self.prob_column:
            cols.append(OutputColumn(self.prob_column, "float_list"))
        return cols

    def label_values(self) -> list[str] | None:
        """The values the prediction column can take, for ``filter_by`` checks and reports."""
        return list(self.labels) if self.labels is not None else None

    def postprocess(self, outputs: np.ndarray) -> dict[str, Any]:
        """Model outputs (one row per valid document) -> column values (lists or numpy arrays)."""
        labels = np.asarray(self.labels, dtype=object)
        cols: dict[str, Any] = {self.pred_column: labels[outputs.argmax(axis=1)].tolist()}
        if self.prob_column:
            cols[self.prob_column] = [row for row in outputs.astype(np.float32)]
        return cols

    def confidence(self, outputs: np.ndarray) -> np.ndarray | None:
        """One number per document for the report's histogram (top probability), or None."""
        return outputs.max(axis=1) if outputs.size else outputs.reshape(0)

    # ----------------------------------------------------------------------------------------------------
    # Driver side: pre-flight (a template; the hooks follow it)
    # ----------------------------------------------------------------------------------------------------

    def preflight(self) -> dict[str, Any]:
        """Check the artifacts in seconds, before any data is read: config, labels, remote code, every weight name
        and shape (from the safetensors headers, with truncation detected), tokenizer and ``filter_by``.

        Fills in ``labels``, ``model_fingerprint`` and ``preflight_info`` (so a caller that finds
        ``preflight_info`` set does not check again); raises ``ModelArtifactError`` with a clear reason.
        """
        model_dir = self.resolve_dir()
        config = self.read_config(model_dir)
        self.labels = self.resolve_labels(config)
        extra = self.extra_dirs()
        checked_with = self.lean_preflight(model_dir, config)
        if checked_with is None:
            self.check_weights(model_dir, config, extra)
            self.load_tokenizer(model_dir)
            checked_with = "transformers"
        log.info("%s: model checked with %s", self.name, checked_with)  # not in preflight_info: it is no output option
        self.check_filter()
        self.model_fingerprint = artifacts_fingerprint(model_dir, extra)
        self.preflight_info = {"classifier": self.name, "model": self.model, "revision": self.revision,
                               **self.preflight_details(), "model_dir": str(model_dir),
                               "fingerprint": self.model_fingerprint, "labels": self.label_values()}
        return self.preflight_info

    def ensure_preflight(self) -> dict[str, Any]:
        """``preflight_info``, running the pre-flight only if it has not run on this instance."""
        if self.preflight_info is None:
            self.preflight()
        return self.preflight_info

    def extra_dirs(self) -> list[Path]:
        """Hook: artifact directories besides the model (an adapter, a head), in a fixed order; they enter the
        fingerprint. Default: none."""
        return []

    def check_weights(self, model_dir: Path, config: dict[str, Any], extra: list[Path]) -> None:
        """Hook: every weight the module needs is in the checkpoint with its shape, and nothing else is.
        Default: ``build_module`` on the meta device against the safetensors headers."""
        base = f" (with its base_model {config['base_model']})" if config.get("base_model") else ""
        expected = expected_shapes(lambda: self.build_module(model_dir, config), f"{model_dir}/config.json{base}")
        compare_keys(expected, checkpoint_shapes(model_dir, self.load_options), str(model_dir))

    def preflight_details(self) -> dict[str, Any]:
        """Hook: what else identifies the checked artifacts in ``preflight_info`` (e.g. the adapter)."""
        return {}

    def check_filter(self) -> None:
        """``filter_by`` names only values the prediction column can take."""
        values = self.label_values()
        unknown = [v for v in (self.filter_by or []) if values is not None and v not in values]
        if unknown:
            raise ValueError(f"{self.name}: filter_by has unknown labels {unknown}; labels are {values}")

    def load_tokenizer(self, model_dir: Path):
        return load_tokenizer(model_dir, self.load_options)

    # ----------------------------------------------------------------------------------------------------
    # Executor side: loading (a template; the hooks follow it)
    # ----------------------------------------------------------------------------------------------------

    def load_engine(self, device: str) -> "InferenceEngine":
        """Model + tokenizer + engine on ``device``. Called once per worker process and device.

        The device's CUDA context is created on a thread meanwhile (``CudaStart``: its error is raised here before
        the engine is made), and the packed forward's kernel modules are imported before the wait
        (:func:`import_packed_kernels`), so both overlap the context's creation (issue 23).
        """
        from sparkcurate.engine.runner import import_packed_kernels
        from sparkcurate.spark.devices import CudaStart

        cuda = CudaStart(device)
        model_dir = self.resolve_dir()
        extra = self.extra_dirs()
        if self.model_fingerprint and artifacts_fingerprint(model_dir, extra) != self.model_fingerprint:
            beside = " (or an artifact beside it: adapter, head)" if extra else ""
            raise ModelArtifactError(
                f"the model at {self.model}{beside} on this executor differs from the one checked on the driver: "
                "every node must see the same checkpoint"
            )
        module, tokenizer = self.load_model(model_dir, extra, device)
        import_packed_kernels(module, device, self.packed)
        cuda.wait()
        return self.make_engine(module, tokenizer, device)

    def load_model(self, model_dir: Path, extra: list[Path], device: str):
        """Hook: (module with its weights, tokenizer). Default: the lean load where it applies
        (:meth:`load_lean`), else ``load_module`` and the model's tokenizer."""
        lean = self.load_lean(model_dir, device)
        if lean is not None:
            return lean
        return self.load_module(model_dir), self.load_tokenizer(model_dir)

    def load_lean(self, model_dir: Path, device: str):
        """(module, tokenizer) of the published DeBERTa head built without importing transformers
        (:mod:`sparkcurate.models.lean`), or None where that load does not apply: a family with its own module
        or tokenizer, the CPU, fp32, ``packed=off``, pickles, a backbone the packed engine cannot run.

        Why: in a fresh worker transformers' imports were most of the model load (10 s of ~13 s on the H100);
        the packed GPU engine needs none of it. Equal outputs: tests/test_lean_deberta.py.
        """
        from sparkcurate.models.lean import lean_tokenizer, load_lean_strict

        config = self.read_config(model_dir)
        backbone = self._lean_backbone(model_dir, config, device)
        if backbone is None:
            return None
        if self.labels is None:
            self.labels = self.resolve_labels(config)
        module = load_lean_strict(self._lean_head(backbone, config), model_dir, self.load_options)
        tokenizer = lean_tokenizer(model_dir)
        if tokenizer is None:
            log.info("%s: no tokenizer.json in %s: transformers' AutoTokenizer loads the tokenizer", self.name,
                     model_dir)
            tokenizer = self.load_tokenizer(model_dir)
        return module, tokenizer

    def _lean_backbone(self, model_dir: Path, config: dict[str, Any], device: str, quiet: bool = False):
        """The backbone config (:class:`~sparkcurate.engine.deberta.DebertaConfig`) of the lean load on ``device``,
        or None where that load does not apply (why is logged unless ``quiet``): a family with its own hooks, the
        rules of :func:`~sparkcurate.models.lean.lean_problem`, a backbone the packed engine cannot run."""
        own = DistributedDataClassifier
        if any(getattr(type(self), hook) is not getattr(own, hook)
               for hook in ("build_module", "load_module", "load_tokenizer", "check_weights", "load_lean")):
            return None
        from sparkcurate.models.lean import lean_config, lean_problem

        why = lean_problem(device, self.precision, self.packed, model_dir)
        if why is None:
            backbone, why = lean_config(backbone_config_dict(config, model_dir, self.load_options), model_dir)
            if backbone is not None:
                if not quiet:
                    log.info("%s: sparkcurate's own modules, %s", self.name, why)
                return backbone
        if not quiet:
            log.info("%s: transformers' modules (%s)", self.name, why)
        return None

    def _lean_head(self, backbone, config: dict[str, Any]):
        """The published head on the lean backbone, on the meta device (``models.lean.build_cls_head``)."""
        from sparkcurate.models.lean import build_cls_head

        return build_cls_head(backbone, len(self.resolve_labels(config)), float(config.get("fc_dropout", 0.2)))

    def lean_preflight(self, model_dir: Path, config: dict[str, Any]) -> str | None:
        """The pre-flight's weight and tokenizer checks against what a GPU worker loads (the lean load: this
        package's DeBERTa modules, ``tokenizer.json`` through ``tokenizers``), without importing transformers;
        None (nothing checked) where that load does not apply, and the caller checks with transformers.

        Why: the driver's import of transformers (its DeBERTa modules, ``AutoTokenizer``) took ~6 s of a fresh
        job's start on the H100 machine, on the critical path before the first Spark job; the checks need none of
        it. The lean modules have the published head's parameter names and shapes (tests/test_lean_deberta.py
        compares both builds), so every weight is still checked by name and shape against the safetensors
        headers, and the tokenizer files field by field. ``device="auto"`` is checked as the GPU path it takes
        on a GPU executor; a CPU executor then loads transformers' tokenizer, whose failure, if any, is reported
        by the first task instead of before the job.
        """
        device = "cpu" if self.device == "cpu" else "cuda"
        if not (model_dir / "tokenizer.json").is_file():
            return None
        backbone = self._lean_backbone(model_dir, config, device, quiet=True)
        if backbone is None:
            return None
        from sparkcurate.models.lean import lean_tokenizer
        from sparkcurate.models.loading import check_tokenizer_files

        expected = expected_shapes(lambda: self._lean_head(backbone, config), f"{model_dir}/config.json")
        compare_keys(expected, checkpoint_shapes(model_dir, self.load_options), str(model_dir))
        check_tokenizer_files(model_dir)
        lean_tokenizer(model_dir)
        return "sparkcurate's own modules (no transformers import)"

    def load_module(self, model_dir: Path):
        """``build_module`` with the checkpoint's weights, loaded strictly."""
        config = self.read_config(model_dir)
        if self.labels is None:
            self.labels = self.resolve_labels(config)
        with skipped_weight_init():  # every weight is overwritten by the strict load just below
            module = self.build_module(model_dir, config)
        load_strict(module, model_dir, self.load_options)
        return module

    def make_engine(self, module, tokenizer, device: str) -> "InferenceEngine":
        """Hook: the engine that runs ``module``. Default: the plain ``InferenceEngine``."""
        from sparkcurate.engine.runner import InferenceEngine

        return InferenceEngine(module, tokenizer, self.engine_config(), device)

    # ----------------------------------------------------------------------------------------------------
    # DataFrame API
    # ----------------------------------------------------------------------------------------------------

    def __call__(self, df: "DataFrame") -> "DataFrame":
        """Add this classifier's columns to ``df`` and keep the ``filter_by`` labels, as NeMo Curator does.

        The result has the input's columns plus ``output_columns()``, nothing else. Rows whose text is null get
        null predictions (and are dropped by ``filter_by``); the command and ``sparkcurate.pipeline`` route such
        rows to ``_rejects`` with a reason before classifying.
        """
        from sparkcurate.spark.stage import classify_dataframe, filter_expression

        self.ensure_preflight()
        out = classify_dataframe(df, [self], confidence=False)
        cond = filter_expression([self])
        return out.filter(cond) if cond is not None else out


def skipped_weight_init():
    """A context in which modules are built without random initialisation (transformers' ``no_init_weights``).

    Why: initialising a DeBERTa-v3-base at random costs ~3.7 s of CPU per worker process, for weights that the
    strict load replaces at once; ``load_strict`` refuses any checkpoint that leaves a weight unset, so nothing
    uninitialised can survive. A transformers without the helper just initialises as before.
    """
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # pragma: no cover - very old transformers
            return contextlib.nullcontext()
    return no_init_weights()


def fingerprint(model_dir: Path) -> str:
    """A cheap identity of a checkpoint: names, sizes and modification-independent header bytes of its files."""
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(path.name.encode())
        h.update(str(path.stat().st_size).encode())
        with open(path, "rb") as fh:
            h.update(fh.read(65536))
    return h.hexdigest()[:16]


def artifacts_fingerprint(model_dir: Path, extra: Sequence[Path] = ()) -> str:
    """The fingerprint of a model and the artifacts beside it (adapter, head), in their order."""
    if not extra:
        return fingerprint(model_dir)
    h = hashlib.sha256(fingerprint(model_dir).encode())
    for path in extra:
        h.update(fingerprint(path).encode())
    return h.hexdigest()[:16]
