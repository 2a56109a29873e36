"""NeMo Curator's prompt task and complexity classifier (nvidia/prompt-task-and-complexity-classifier).

A DeBERTa-v3 backbone, attention-mask mean pooling (not CLS) and one linear head per target. The module mirrors
NeMo's ``CustomDeberta`` parameter names (``backbone.*``, ``head_{i}.fc.*``; the pooling has no weights) so the
published safetensors load strictly. Its forward returns every head's softmax, concatenated in ``target_sizes``
order, ``[B, sum(target_sizes)]``; ``postprocess`` splits them and computes NeMo's outputs with NeMo's rounding:
task_type_1/2 (the second "NA" when its probability, rounded to 3 places, is below 0.1), task_type_prob (3
places), each other target ``round(sum(p * weights) / divisor, 4)`` (few-shots below 0.05 become 0), and
prompt_complexity_score (5 places).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sparkcurate.classifiers.base import DistributedDataClassifier, OutputColumn
from sparkcurate.models.loading import ModelArtifactError, backbone_config_dict, build_backbone_config

TASK_TYPE = "task_type"
FEW_SHOTS = "number_of_few_shots"
# NeMo Curator's OUTPUT_FIELDS, in its order.
PROMPT_COLUMNS = [
    "prompt_complexity_score", "task_type_1", "task_type_2", "task_type_prob", "creativity_scope", "reasoning",
    "contextual_knowledge", "number_of_few_shots", "domain_knowledge", "no_label_reason", "constraint_ct",
]
# prompt_complexity_score = sum(weight * target score)
COMPLEXITY_WEIGHTS = (
    ("creativity_scope", 0.35), ("reasoning", 0.25), ("constraint_ct", 0.15), ("domain_knowledge", 0.15),
    ("contextual_knowledge", 0.05), ("number_of_few_shots", 0.05),
)
SECOND_TASK_MIN_PROB = 0.1
FEW_SHOTS_MIN = 0.05


def build_prompt_complexity_module(backbone_config, target_sizes: list[int]):
    """NeMo's ``CustomDeberta`` with the backbone built from its config (no base weights downloaded)."""
    import torch
    from torch import nn
    from transformers import AutoModel

    from sparkcurate.models.heads import mean_pool

    class MulticlassHead(nn.Module):
        def __init__(self, input_size: int, num_classes: int) -> None:
            super().__init__()
            self.fc = nn.Linear(input_size, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    class PromptComplexityModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = AutoModel.from_config(backbone_config)
            self.n_heads = len(target_sizes)
            for i, size in enumerate(target_sizes):
                self.add_module(f"head_{i}", MulticlassHead(backbone_config.hidden_size, int(size)))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            # NeMo pools in float32 (its mask is cast to float, which promotes bf16 states).
            pooled = mean_pool(hidden.float(), attention_mask)
            head_dtype = self.head_0.fc.weight.dtype
            probs = [torch.softmax(getattr(self, f"head_{i}")(pooled.to(head_dtype)).float(), dim=-1)
                     for i in range(self.n_heads)]
            return torch.cat(probs, dim=-1)

    return PromptComplexityModel()


def _require(config: dict[str, Any], key: str) -> Any:
    if key not in config:
        raise ModelArtifactError(f"prompt-task-complexity: config.json has no {key!r}")
    return config[key]


@dataclass
class PromptTaskComplexityClassifier(DistributedDataClassifier):
    """Task type (11 kinds) and six complexity dimensions of English prompts. No ``filter_by`` (as in NeMo).

    The config's maps are read on the driver in ``preflight`` and travel with the classifier as plain values
    (internal state, not arguments: the model's config is their only source).
    """

    target_sizes: dict[str, int] | None = field(default=None, init=False)
    task_type_map: dict[str, str] | None = field(default=None, init=False)
    weights_map: dict[str, list[float]] | None = field(default=None, init=False)
    divisor_map: dict[str, float] | None = field(default=None, init=False)

    name: ClassVar[str] = "prompt-task-complexity"
    description: ClassVar[str] = "prompt task type and complexity scores (DeBERTa-v3-base, mean pooling)"
    default_model: ClassVar[str] = "nvidia/prompt-task-and-complexity-classifier"
    default_pred_column: ClassVar[str] = "task_type_1"
    default_max_chars: ClassVar[int | None] = None
    default_max_tokens: ClassVar[int] = 512
    supports_filter: ClassVar[bool] = False
    extra_columns: ClassVar[tuple[str, ...]] = tuple(c for c in PROMPT_COLUMNS if c != "task_type_1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pred_column != "task_type_1" or self.prob_column:
            raise ValueError(f"{self.name} writes NeMo's fixed columns {PROMPT_COLUMNS}: pred_column and "
                             "prob_column cannot be changed")

    # -- the model's own config -----------------------------------------------------------------------------

    def read_config(self, model_dir: Path) -> dict[str, Any]:
        config = super().read_config(model_dir)
        self._set_maps(config)
        return config

    def _set_maps(self, config: dict[str, Any]) -> None:
        sizes = {str(k): int(v) for k, v in dict(_require(config, "target_sizes")).items()}
        if not sizes or next(iter(sizes)) != TASK_TYPE:
            raise ModelArtifactError(f"prompt-task-complexity: target_sizes must start with {TASK_TYPE!r}: {sizes}")
        task_map = {str(k): str(v) for k, v in dict(_require(config, "task_type_map")).items()}
        weights = {str(k): [float(x) for x in v] for k, v in dict(_require(config, "weights_map")).items()}
        divisors = {str(k): float(v) for k, v in dict(_require(config, "divisor_map")).items()}
        if sorted(int(k) for k in task_map) != list(range(sizes[TASK_TYPE])):
            raise ModelArtifactError(f"task_type_map must name ids 0..{sizes[TASK_TYPE] - 1}")
        for target, size in sizes.items():
            if target == TASK_TYPE:
                continue
            if target not in PROMPT_COLUMNS:
                raise ModelArtifactError(f"prompt-task-complexity: unknown target {target!r} in target_sizes")
            if len(weights.get(target, [])) != size or target not in divisors:
                raise ModelArtifactError(f"weights_map/divisor_map do not match target {target!r} of size {size}")
        missing = [c for c, _ in COMPLEXITY_WEIGHTS if c not in sizes]
        if missing:
            raise ModelArtifactError(f"prompt-task-complexity: target_sizes lacks {missing}")
        self.target_sizes, self.task_type_map, self.weights_map, self.divisor_map = sizes, task_map, weights, divisors

    def resolve_labels(self, config: dict[str, Any]) -> list[str]:
        """The task types, ordered by id (what ``task_type_1`` can take)."""
        task_map = _require(config, "task_type_map")
        return [str(task_map[k]) for k in sorted(task_map, key=int)]

    def build_module(self, model_dir: Path, config: dict[str, Any]):
        backbone = build_backbone_config(backbone_config_dict(config, model_dir, self.load_options))
        sizes = [int(v) for v in dict(_require(config, "target_sizes")).values()]
        return build_prompt_complexity_module(backbone, sizes)

    # -- outputs --------------------------------------------------------------------------------------------

    def output_columns(self) -> list[OutputColumn]:
        return [OutputColumn(c, "string" if c in ("task_type_1", "task_type_2") else "double")
                for c in PROMPT_COLUMNS]

    def _split(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.target_sizes is None:
            raise RuntimeError(f"{self.name}: call preflight() first (it reads the model's target maps)")
        sizes = list(self.target_sizes.values())
        if outputs.size == 0:
            outputs = outputs.reshape(0, sum(sizes))
        if outputs.ndim != 2 or outputs.shape[1] != sum(sizes):
            raise ValueError(f"{self.name}: expected outputs [n, {sum(sizes)}], got {outputs.shape}")
        bounds = np.cumsum([0] + sizes)
        return {t: outputs[:, bounds[i]:bounds[i + 1]] for i, t in enumerate(self.target_sizes)}

    def postprocess(self, outputs: np.ndarray) -> dict[str, Any]:
        probs = self._split(outputs)
        cols: dict[str, Any] = self._task_types(probs[TASK_TYPE])
        for target, p in probs.items():
            if target != TASK_TYPE:
                cols[target] = self._target_score(target, p)
        score = np.zeros(outputs.shape[0], dtype=np.float64)
        for target, weight in COMPLEXITY_WEIGHTS:  # NeMo's order of additions
            score = score + weight * cols[target]
        cols["prompt_complexity_score"] = np.round(score, 5)
        return cols

    def _task_types(self, probs: np.ndarray) -> dict[str, Any]:
        """Top two task types; the second is "NA" when its probability (rounded to 3 places) is below 0.1."""
        top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
        # Python's round on Python floats, as NeMo rounds its ``.tolist()`` values.
        p = [[round(float(x), 3) for x in row] for row in np.take_along_axis(probs, top2, axis=1)]
        names = [[self.task_type_map[str(int(i))] for i in row] for row in top2]
        second = [n[1] if pr[1] >= SECOND_TASK_MIN_PROB else "NA" for n, pr in zip(names, p)]
        return {"task_type_1": [n[0] for n in names], "task_type_2": second,
                "task_type_prob": np.asarray([pr[0] for pr in p], dtype=np.float64)}

    def _target_score(self, target: str, probs: np.ndarray) -> np.ndarray:
        weights = np.asarray(self.weights_map[target], dtype=np.float64)
        scores = np.round((probs.astype(np.float32) * weights).sum(axis=1) / self.divisor_map[target], 4)
        if target == FEW_SHOTS:
            scores = np.where(scores >= FEW_SHOTS_MIN, scores, 0.0)
        return scores

    def confidence(self, outputs: np.ndarray) -> np.ndarray:
        """The complexity score, which lies in [0, 1], for the report's histogram."""
        return np.asarray(self.postprocess(outputs)["prompt_complexity_score"], dtype=np.float32)
