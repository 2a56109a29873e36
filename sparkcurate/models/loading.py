"""Find, check and load model artifacts: strictly, offline-first, and without unpickling anything by default.

Why this module exists: the reference loader downloads ~371 MB of base weights only to overwrite them and loads
the head with ``strict=False``, so a key mismatch silently leaves random weights. Here the backbone is built from
its *config* (never from base weights), every tensor is loaded strictly, and a pre-flight check validates the
artifacts on the driver in seconds, before any data is read.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from sparkcurate.models.artifacts import (
    TOKENIZER_FILE_CHECKS,
    ModelArtifactError,
    check_fields,
    check_safetensors_header,
    describe,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "model.pth", "model.pt", "pytorch_model.pth")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spm.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# What a hub snapshot needs: configs, safetensors weights and tokenizer files. Pickles are fetched only when
# the user allowed them, so a pickle-only repository fails the pre-flight check with a clear reason.
HUB_PATTERNS = ["*.json", "*.safetensors", *TOKENIZER_FILES]


@dataclass(frozen=True)
class LoadOptions:
    """How a model may be loaded. Plain values, so it crosses to executors inside a classifier."""

    revision: str | None = None
    cache_dir: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False


# ----------------------------------------------------------------------------------------------------------
# Locating the model directory
# ----------------------------------------------------------------------------------------------------------

def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_dir(model: str, options: LoadOptions = LoadOptions()) -> Path:
    """Turn a model argument into a local directory.

    A local directory is used as it is; an object-store URI is copied once per node (``models.remote``); anything
    else shaped like ``owner/name`` is a hub id fetched into the node-local Hugging Face cache at the pinned
    revision (offline use works from that cache).
    """
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return Path(expanded).resolve()
    if "://" in model or model.startswith("dbfs:/"):
        from sparkcurate.models.remote import RemoteModelError, resolve_model_uri

        try:  # node-local copy under SPARKCURATE_CACHE (not the hub cache), keyed by URI and revision
            return Path(resolve_model_uri(model, None, revision=options.revision))
        except RemoteModelError as exc:
            raise ModelArtifactError(str(exc)) from exc
    if os.path.exists(expanded):
        raise ModelArtifactError(f"model path {model!r} is a file; give the directory that holds config.json")
    if not _looks_like_hub_id(model):
        raise ModelArtifactError(
            f"model {model!r} is neither an existing directory nor a hub id of the form owner/name"
        )
    return _snapshot_from_hub(model, options)


def _snapshot_from_hub(repo_id: str, options: LoadOptions) -> Path:
    from huggingface_hub import snapshot_download

    patterns = list(HUB_PATTERNS) + (list(PICKLE_WEIGHT_FILES) if options.allow_pickle else [])
    try:
        path = snapshot_download(
            repo_id, revision=options.revision, cache_dir=options.cache_dir, allow_patterns=patterns
        )
    except Exception as exc:  # the hub client raises many types; all mean "not available here"
        raise ModelArtifactError(
            f"could not get model {repo_id!r} (revision {options.revision or 'main'}) from the hub or its local "
            f"cache: {type(exc).__name__}: {exc}. Offline, pass a local directory with the checkpoint "
            "(config.json, model.safetensors, tokenizer files) instead of a hub id."
        ) from exc
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------

class ArtifactJson(dict):
    """A JSON object read from an artifact, remembering its file (``source``) so that a later error, e.g. from
    transformers building a model from it, can still name the file."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        super().__init__(data)
        self.source = source


def source_of(config: Mapping[str, Any], default: str) -> str:
    """The file a config was read from, or ``default`` for a dict made in code."""
    return getattr(config, "source", default)


def read_json(path: Path) -> ArtifactJson:
    """A JSON object from an artifact file, every field the package reads checked (``models.artifacts``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise ModelArtifactError(f"{path.name} is missing in {path.parent}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:  # a directory named like the file, no permission
        raise ModelArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise ModelArtifactError(f"{path} must hold a JSON object, got {describe(data)}")
    check_fields(data, str(path))
    return ArtifactJson(data, str(path))


def check_remote_code(config: Mapping[str, Any], model_dir: Path, options: LoadOptions) -> None:
    """Refuse configs that ask for code from the hub unless the user trusted them *and* pinned a revision."""
    if "auto_map" not in config:
        return
    if not options.trust_remote_code:
        raise ModelArtifactError(
            f"{model_dir}/config.json asks to run remote code (auto_map). Refused: pass --trust-remote-code "
            "together with --revision <commit> if you trust this repository."
        )
    if not options.revision:
        raise ModelArtifactError("--trust-remote-code needs a pinned --revision so the code cannot change under you")


def known_base_config(base_model: str) -> dict[str, Any] | None:
    """Configs of the common base models ship with the package, so no hub access is needed for them."""
    name = base_model.replace("/", "--") + ".json"
    try:
        text = resources.files("sparkcurate.data.base_configs").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    source = f"the shipped base config {name}"
    data = json.loads(text)
    check_fields(data, source)
    return ArtifactJson(data, source)


_BACKBONE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads")


def backbone_config_dict(head_config: Mapping[str, Any], model_dir: Path, options: LoadOptions) -> dict[str, Any]:
    """The backbone's architecture, from (in order) the head config itself, a local base_model directory, the
    configs shipped with the package, or the base model's config.json on the hub (a few KB, never weights)."""
    if all(k in head_config for k in _BACKBONE_KEYS) and head_config.get("model_type"):
        return ArtifactJson(head_config, source_of(head_config, f"{model_dir}/config.json"))
    base_model = head_config.get("base_model")
    if not base_model:
        raise ModelArtifactError(f"{model_dir}/config.json has neither a backbone config nor 'base_model'")
    base_path = Path(os.path.expanduser(str(base_model)))
    if not base_path.is_absolute():
        relative = model_dir / base_path
        if relative.is_dir():
            base_path = relative
    if base_path.is_dir():
        return read_json(base_path / "config.json")
    shipped = known_base_config(str(base_model))
    if shipped is not None:
        return shipped
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(str(base_model), "config.json", cache_dir=options.cache_dir)
    except Exception as exc:
        raise ModelArtifactError(
            f"base_model {base_model!r} is not a local directory, not one of the shipped base configs and could "
            f"not be fetched ({type(exc).__name__}: {exc})"
        ) from exc
    return read_json(Path(path))


_HEAD_KEYS = ("base_model", "fc_dropout", "id2label", "label2id", "architectures")


def build_backbone_config(config_dict: Mapping[str, Any], keep_head_keys: bool = False, what: str = "backbone"):
    """A transformers config object from a dict, never with ``auto_map`` (no remote code).

    The head's own keys are dropped, unless ``keep_head_keys``: a full transformers model's config (FineWeb-Edu,
    Llama) *is* the model's config, and there ``id2label`` sets ``num_labels``.
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    source = source_of(config_dict, f"the {what} config")
    check_fields(config_dict, source)  # a no-op for what read_json read; dicts made in code are checked here
    cfg = dict(config_dict)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ModelArtifactError(f"{source}: field 'model_type' is missing ({what} config)")
    if model_type not in CONFIG_MAPPING:
        raise ModelArtifactError(f"{source}: field 'model_type' names no model type this transformers version "
                                 f"knows, got {describe(model_type)}")
    cfg.pop("auto_map", None)
    if not keep_head_keys:
        for key in _HEAD_KEYS:
            cfg.pop(key, None)
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except Exception as exc:  # transformers validates fields its own way (ValueError, TypeError, its own types)
        raise ModelArtifactError(f"{source}: transformers refuses the {model_type} config: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from exc


def labels_from_config(config: Mapping[str, Any]) -> list[str] | None:
    """Labels ordered by their ids in ``label2id`` (a past NeMo bug came from not sorting them)."""
    label2id = config.get("label2id")
    if label2id:
        ordered = sorted(label2id.items(), key=lambda kv: int(kv[1]))
        ids = [int(v) for _, v in ordered]
        if ids != list(range(len(ids))):
            raise ModelArtifactError(f"label2id ids must be 0..n-1, got {sorted(ids)}")
        return [k for k, _ in ordered]
    id2label = config.get("id2label")
    if id2label:
        return [id2label[k] for k in sorted(id2label, key=int)]
    return None


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------

def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / SAFETENSORS_INDEX
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if weight_map is None:
            raise ModelArtifactError(f"{index}: field 'weight_map' is missing")
        return [model_dir / s for s in sorted(set(weight_map.values()))]
    single = model_dir / SAFETENSORS
    return [single] if single.exists() else []


def pickle_files(model_dir: Path) -> list[Path]:
    found = [model_dir / n for n in PICKLE_WEIGHT_FILES if (model_dir / n).exists()]
    return found or sorted(model_dir.glob("*.pth")) + sorted(model_dir.glob("*.pt"))


def read_safetensors_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor names -> (shape, dtype) from the header alone, every entry checked and truncation detected.

    Reading only the header makes the pre-flight check take milliseconds even for multi-GB checkpoints.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ModelArtifactError(f"{path} is truncated (no safetensors header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, 100 * 2**20):
                raise ModelArtifactError(f"{path} is corrupt (header length {header_len} exceeds the file)")
            header = json.loads(fh.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{path} is corrupt (unreadable safetensors header: {exc})") from exc
    except OSError as exc:
        raise ModelArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    return check_safetensors_header(header, str(path), size - 8 - header_len)


def normalize_legacy_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """The 2024 ``.pth`` form: maybe under ``model_state_dict``, maybe ``module.``-prefixed (DataParallel),
    maybe holding the non-persistent ``position_ids`` buffer."""
    if "model_state_dict" in state and isinstance(state["model_state_dict"], Mapping):
        state = state["model_state_dict"]
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.endswith("embeddings.position_ids"):
            continue
        out[key] = value
    return out


def load_state_dict(model_dir: Path, options: LoadOptions) -> dict[str, "torch.Tensor"]:
    """All weights of a checkpoint as CPU tensors: safetensors, or a pickle only when explicitly allowed (and
    then with ``weights_only=True``, which refuses arbitrary objects)."""
    files = safetensors_files(model_dir)
    if files:
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for f in files:
            try:
                state.update(load_file(str(f)))
            except Exception as exc:
                raise ModelArtifactError(f"{f} could not be read: {exc}") from exc
        return normalize_legacy_keys(state)
    pickles = pickle_files(model_dir)
    if not pickles:
        raise ModelArtifactError(f"no weights in {model_dir}: expected {SAFETENSORS}")
    if not options.allow_pickle:
        raise ModelArtifactError(
            f"{model_dir} has only pickle weights ({pickles[0].name}). Pickles can run arbitrary code when loaded, "
            "so they are refused by default. Convert them to safetensors, or pass --allow-pickle to load them "
            "with torch.load(weights_only=True)."
        )
    import torch

    try:
        raw = torch.load(str(pickles[0]), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelArtifactError(f"{pickles[0]} could not be loaded weights-only: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ModelArtifactError(f"{pickles[0]} does not hold a state dict")
    return normalize_legacy_keys(raw)


def checkpoint_shapes(model_dir: Path, options: LoadOptions) -> dict[str, list[int]]:
    """Names and shapes of the checkpoint's tensors without loading them (pickles must be loaded)."""
    files = safetensors_files(model_dir)
    if files:
        shapes: dict[str, list[int]] = {}
        for f in files:
            if not f.exists():
                raise ModelArtifactError(f"{f} is missing (listed in {SAFETENSORS_INDEX})")
            shapes.update({k: v[0] for k, v in read_safetensors_header(f).items()})
        return {k: v for k, v in normalize_legacy_keys(shapes).items()}
    return {k: list(v.shape) for k, v in load_state_dict(model_dir, options).items()}


def compare_keys(expected: Mapping[str, Iterable[int]], found: Mapping[str, Iterable[int]], where: str) -> None:
    """Strict loading: a missing, unexpected or mis-shaped tensor is an error, never random weights."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
    bad = [k for k in set(expected) & set(found) if list(expected[k]) != list(found[k])]
    if bad:
        k = sorted(bad)[0]
        problems.append(f"{len(bad)} with the wrong shape (e.g. {k}: {list(found[k])} vs {list(expected[k])})")
    if problems:
        raise ModelArtifactError(f"weights in {where} do not match the model: " + "; ".join(problems))


def load_strict(module: "torch.nn.Module", model_dir: Path, options: LoadOptions) -> None:
    """Load every weight of ``module`` from the checkpoint, refusing any mismatch."""
    state = load_state_dict(model_dir, options)
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    compare_keys(expected, {k: list(v.shape) for k, v in state.items()}, str(model_dir))
    module.load_state_dict(state, strict=True)


def expected_shapes(build_module, where: str = "the model's config") -> dict[str, list[int]]:
    """Parameter names and shapes of a module built on the meta device: no memory, no time.

    The fields the package reads are checked where they are read; a config that still cannot build its model
    (a field only transformers reads) is a ModelArtifactError naming ``where``, not a traceback.
    """
    import torch

    try:
        with torch.device("meta"):
            module = build_module()
    except ModelArtifactError:
        raise
    except Exception as exc:  # transformers and torch raise many types for a config that builds no model
        raise ModelArtifactError(f"{where} does not describe a model that can be built: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------

def check_tokenizer_files(model_dir: Path) -> None:
    """The tokenizer's JSON files hold what transformers reads from them, so a malformed one is an error naming
    the file and the field (transformers would fail with whatever its code meets first)."""
    for name in TOKENIZER_FILES:
        path = model_dir / name
        if name.endswith(".json") and path.is_file():
            data = read_json(path)
            check = TOKENIZER_FILE_CHECKS.get(name)
            if check is not None:
                check(data, str(path))


def load_tokenizer(model_dir: Path, options: LoadOptions = LoadOptions()):
    """The checkpoint's own tokenizer, offline, with no remote code."""
    from transformers import AutoTokenizer

    check_tokenizer_files(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(model_dir), trust_remote_code=options.trust_remote_code, local_files_only=True
        )
    except Exception as exc:
        raise ModelArtifactError(f"the tokenizer in {model_dir} could not be loaded: {type(exc).__name__}: {exc}")
    if not getattr(tok, "is_fast", False):
        log.warning("tokenizer in %s is not a fast (Rust) tokenizer: tokenization will be slow", model_dir)
    return tok
