"""NeMo Curator's instruction-data guard (nvidia/instruction-data-guard): LLM-poisoning triggers in
instruction-response data.

The Aegis backbone (LlamaGuard-7b + the *defensive* adapter) reads the raw text (no prompt, no character cut by
default, up to 4096 tokens); its last hidden state at the last token (after the final norm, as NeMo's
``hidden_states[0][32][:, -1]``) goes into ``InstructionDataGuardNet``: L2-normalize, Linear d->d, ReLU,
Linear d->2000, ReLU, Linear 2000->500, ReLU, Linear 500->1, sigmoid (the dropout layers are off at inference).
Columns as NeMo 1.x names them: ``instruction_data_guard_poisoning_score`` (float) and ``is_poisoned`` (bool,
score >= 0.5), the prediction column; ``filter_by=[False]`` keeps the clean rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sparkcurate.classifiers.aegis import LlamaGuardClassifier
from sparkcurate.classifiers.base import OutputColumn
from sparkcurate.models.loading import ModelArtifactError, read_json, resolve_model_dir

INSTRUCTION_DATA_GUARD_MODEL = "nvidia/instruction-data-guard"
POISONED_THRESHOLD = 0.5
GUARD_HIDDEN = (2000, 500)  # hard-coded in NeMo's InstructionDataGuardNet
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


def build_guard_net(input_dim: int, dropout: float = 0.7):
    """NeMo's ``InstructionDataGuardNet`` with its parameter names (``input_layer``, ``hidden_layer_0..2``)."""
    import torch
    from torch import nn

    class InstructionDataGuardNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_dim = input_dim
            self.dropout = nn.Dropout(dropout)
            self.sigmoid = nn.Sigmoid()
            self.input_layer = nn.Linear(input_dim, input_dim)
            self.hidden_layer_0 = nn.Linear(input_dim, GUARD_HIDDEN[0])
            self.hidden_layer_1 = nn.Linear(GUARD_HIDDEN[0], GUARD_HIDDEN[1])
            self.hidden_layer_2 = nn.Linear(GUARD_HIDDEN[1], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.normalize(x, dim=-1)
            for layer in (self.input_layer, self.hidden_layer_0, self.hidden_layer_1):
                x = nn.functional.relu(layer(self.dropout(x)))
            return self.sigmoid(self.hidden_layer_2(self.dropout(x)))

    return InstructionDataGuardNet()


def _as_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    word = str(value).strip().lower()
    if word not in _BOOL_WORDS:
        raise ValueError(f"instruction-data-guard: filter_by values are true/false, got {value!r}")
    return _BOOL_WORDS[word]


@dataclass
class InstructionDataGuardClassifier(LlamaGuardClassifier):
    """``guard_model``: the MLP head (hub id or directory with config.json + model.safetensors)."""

    guard_model: str = INSTRUCTION_DATA_GUARD_MODEL
    guard_revision: str | None = None
    score_column: str = "instruction_data_guard_poisoning_score"

    name: ClassVar[str] = "instruction-data-guard"
    description: ClassVar[str] = ("LLM-poisoning triggers in instruction data: LlamaGuard-7b + Aegis defensive LoRA "
                                  "+ nvidia/instruction-data-guard MLP")
    default_pred_column: ClassVar[str] = "is_poisoned"
    default_max_chars: ClassVar[int | None] = None
    extra_columns: ClassVar[tuple[str, ...]] = ("instruction_data_guard_poisoning_score",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filter_by is not None:
            self.filter_by = [_as_bool(v) for v in self.filter_by]
        if self.prob_column:
            raise ValueError(f"{self.name}: use score_column for the score")

    def resolve_labels(self, config: dict[str, Any]) -> list[str]:
        return ["False", "True"]

    def label_values(self) -> list[bool]:
        return [False, True]

    # -- the guard head -------------------------------------------------------------------------------------

    def resolve_guard_dir(self) -> Path:
        from sparkcurate.models.llm import with_revision

        return resolve_model_dir(self.guard_model, with_revision(self.load_options, self.guard_revision))

    def extra_dirs(self) -> list[Path]:
        return [self.resolve_adapter_dir(), self.resolve_guard_dir()]

    def _guard_input_dim(self, guard_dir: Path, base_config: dict[str, Any]) -> tuple[int, float]:
        cfg = read_json(guard_dir / "config.json")
        if "input_dim" not in cfg:
            raise ModelArtifactError(f"{guard_dir}/config.json has no input_dim: not an instruction-data guard head")
        dim = int(cfg["input_dim"])
        hidden = base_config.get("hidden_size")
        if hidden is not None and int(hidden) != dim:
            raise ModelArtifactError(f"guard head input_dim {dim} does not match the base model's hidden size {hidden}")
        return dim, float(cfg.get("dropout", 0.7))

    def check_extra(self, config: dict[str, Any], extra: list[Path]) -> None:
        """The head's weights, names and shapes, against a meta-device build."""
        from sparkcurate.models.loading import checkpoint_shapes, compare_keys, expected_shapes

        dim, dropout = self._guard_input_dim(extra[1], config)
        expected = expected_shapes(lambda: build_guard_net(dim, dropout), f"{extra[1]}/config.json")
        compare_keys(expected, checkpoint_shapes(extra[1], self.load_options), str(extra[1]))

    def wrap_module(self, lm, tokenizer, config: dict[str, Any], extra: list[Path]):
        from sparkcurate.models.llm import LastTokenScoreModule
        from sparkcurate.models.loading import load_strict

        dim, dropout = self._guard_input_dim(extra[1], config)
        head = build_guard_net(dim, dropout)
        load_strict(head, extra[1], self.load_options)
        return LastTokenScoreModule(lm, head.eval())

    # -- outputs --------------------------------------------------------------------------------------------

    def output_columns(self) -> list[OutputColumn]:
        return [OutputColumn(self.score_column, "float"), OutputColumn(self.pred_column, "bool")]

    def postprocess(self, outputs: np.ndarray) -> dict[str, Any]:
        if outputs.size == 0:
            outputs = outputs.reshape(0, 1)
        if outputs.ndim != 2 or outputs.shape[1] != 1:
            raise ValueError(f"{self.name}: expected one score per document, got outputs of shape {outputs.shape}")
        scores = outputs[:, 0].astype(np.float32)
        return {self.score_column: scores, self.pred_column: scores >= POISONED_THRESHOLD}

    def confidence(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.reshape(-1).astype(np.float32)
