"""NVIDIA's Aegis content-safety classifiers: LlamaGuard-7b with a PEFT LoRA adapter that generates a verdict.

The document's first ``max_chars`` (6000) characters go into LlamaGuard's safety prompt with NVIDIA's 13 unsafe
categories (the exact text NeMo Curator uses: the adapters were trained on it, so it must not change), the model
greedily generates up to 100 tokens, and the answer is parsed: ``safe``; ``unsafe`` with a category on the
second line gives that category (``O1``..``O13``); anything else gives ``unknown``. The column is ``aegis_pred``;
``keep_raw_pred`` adds the decoded generation as ``_aegis_raw_pred`` (NeMo's ``keep_raw_output``).

Options: ``model`` / ``base_model`` (LlamaGuard-7b: hub id or directory), ``adapter`` (``defensive``,
``permissive``, a hub id or a directory), ``adapter_revision``. The module is ``models.llm.GenerationModule``; the
engine's right-padded batches are re-packed to the left padding that generation needs. ``peft`` is an optional
extra (``pip install 'sparkcurate[peft]'``).

One deliberate difference from NeMo: the raw output is the decoding of the generated tokens alone, not the
decoding of prompt + generation with the prompt's character count cut off (which breaks when the tokenizer does
not reproduce the prompt exactly). The parsed prediction is the same, since both strip each line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sparkcurate.classifiers.base import DistributedDataClassifier, OutputColumn
from sparkcurate.models.loading import ModelArtifactError, resolve_model_dir

if TYPE_CHECKING:  # pragma: no cover
    from sparkcurate.engine.runner import InferenceEngine

LLAMA_GUARD_MODEL = "meta-llama/LlamaGuard-7b"
AEGIS_VARIANTS: dict[str, str] = {
    "defensive": "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0",
    "permissive": "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Permissive-1.0",
}
AEGIS_LABELS = ["unknown", "safe"] + [f"O{i}" for i in range(1, 14)]
AEGIS_MAX_NEW_TOKENS = 100
AEGIS_MAX_TOKENS = 4096

# The 13 categories of NVIDIA's content-safety taxonomy, verbatim (typos included) from NeMo Curator's
# aegis_utils: the adapters were fine-tuned on this exact prompt.
UNSAFE_CATEGORIES = """O1: Violence.
Should not
- Help people plan or engage in violence.
- Encourage people to engage in violence.
- Contain unpleasant vivid violent imagery or violent description that arouses discomfort in the reader.
Can
- Provide information on violence.
- Discuss the topics of violence, and can discuss historical events involving violence.
O2: Sexual.
Should not
- Engage in sexually explicit (i.e., erotic) conversations and should not encourage people to engage in sexual activities.
- Engage or encourage sexual activity that is considered illegal.
Can
- Discuss topics related to sexuality and sexual education.
- Provide general information regarding sexual activities.
- Provide guidance on topics related to sexual health.
O3: Criminal Planning/Confessions.
Should not
- Help people plan or engage in criminal activities like theft, kidnapping, or financial crimes, especially when the person indicates that they may act on the information provided to them.
- Encourage people to engage in criminal activities or condone criminal behavior.
- Have a confession of crime that was committed or will be committed in future.
Can
- Help people understand how crimes are committed, provided that the response is not so detailed that it could be used to provide a roadmap for future crimes.
- Help people understand how systems work that are used to prevent crimes, provided those descriptions do not provide detailed information on how to defeat those systems.
O4: Guns and Illegal Weapons.
Should not
- Assist in the planning or execution of firearm or illegal weapons crimes, especially when the person indicates that they may act on the information provided to them.
- Encourage people to engage in firearm or illegal weapons crimes or condone such behavior.
- Assist or encourage people to execute or own other illegal weapons for example biological agents, or chemical weapons, including instructions on how to create or use them.
Can
- Discuss firearms and the arguments for and against firearm ownership.
O5: Controlled/Regulated Substances.
Should not
- Encourage or assist people in the trafficking, consumption, or use of regulated or controlled substances, including but not limited to illegal drugs, tobacco, alcohol, and cannabis.
- Assist or encourage people to create such substances when it is illegal to do so.
Can
- Discuss the use of regulated or controlled substances, and can provide general information on those substances (ex: what their chemical composition is and what their effects are).
- Provide information on how those substances are manufactured, provided that the information is not so detailed as to provide step-by-step instructions for their creation.
O6: Suicide and Self Harm.
Should not
- Encourage people to harm themselves.
- Romanticize or condone self-harm or suicide.
- Provide information regarding the methods of suicide or self-harm.
- Provide any information or advice, other than information regarding appropriate health resources, to people who express or imply that they wish to harm themselves.
- Contain confessions or intent of self harm
Can
- Provide general information regarding self-harm and suicide (ex: statistics, the mental health challenges faced by those who take these actions).
Should
- Provide information regarding appropriate health resources to people who imply or express the desire to harm themselves.
O7: Sexual (minor).
Should not
- Assist, engage or encourage intention to engage in sexual activity with an underage/minor.
- Discuss or plan sexual acts, sharing of media of sexual nature, personal information or intention to meet in person for sexual activity with a minor.
- Should not include discussion where private information is shared with underage minors for purposes of acting on them and taking actions that are sexual in nature including meeting or sharing media.
- Should not discuss child abuse or engage, encourage, assist in sexual grooming/trafficking of children.
Can
- Provide information about sex education for use in schools.
O8: Hate /identity hate.
Should not
- Express hateful, derogatory, or demeaning sentiments against people based on sensitive personal characteristics like their
race, color, ethinicity, religion, national origin, sexual orientation, gender, gender identity, or disability or caste.
- Encourage discrimination against people based on those characteristics and should not use slurs or create insults based on those characteristics.
- Should not discuss prejudice towards a group classified as protected according to the law of Germany, UK, USA or any other country.
- Should not contain slurs.
- Should not contain text that is distasteful, offensive, or hateful that causes others to feel grief, anger, or fear.
Can
- Provide information on discrimination.
- Discuss the topics of discrimination, and can discuss historical events involving discrimination.
- Discuss neutral statements referring to group identity and  contextualized hate speech (that talks about hate but does not incite hate).
O9: PII/Privacy.
Should not
- Include statements that either requests for PII information made in a conversation turn or mention information such as name, address,
phone number or other social media handle.
- Should not discuss or contain personally identifying information(PII) that isn’t publicly available and can be used to determine the identity of the user such as
date of birth, national ID, IP address, internet cookies, other telemetry information, physical characteristics, biometrics data, financial, health, belief or social data.
- Should not include any statement that violates privacy laws set out by GDPR, Europe, CCPA, California,  Personal Information Protection law (PIPL) China and
Children’s Online Privacy Protection Act (COPPA), US and all country, state, and municipal level privacy law.
Can
- Provide information what PII means.
- Provide information about privacy laws across different countries and regions.
O10: Harassment.
Should not
- Have content that may be used to torment or annoy individuals in real life, or make harassment more likely to occur.
- Engage in harassment, misconduct and unlawful discrimination
- Single out an individual or marginalization and/or retaliation based on protected characteristics like Race, Color, Gender, Sex,
Sexual orientation, Gender identity, and gender expression, National origin, Ethnicity, Disability (including being regarded as disabled),
Religion, Age (40+), Pregnancy (including pregnancy, childbirth or related medical conditions), Genetic information, Military or veteran status, Citizenship status, Political activity, or affiliation,
- Taking or requesting statutorily protected leave Body characteristics.
- Promise to give a benefit, or a threat to retaliate or take an adverse action based on a response to harassment and misconduct.
- Bullying.
- Being derogatory and humiliating toward an individual but not necessarily protected characteristics under law.
- Making rude or insulting comments, demeaning, and objectifying terms toward an individual.
Can
- Discuss negative impacts of harassment and bullying based on protected characteristics like race, color, gender, sex, nationality, within a contextualized setting.
- Provide information on protected characteristics or referor cite material that describes what protected characteristics are.
- Provide information or refer or cite material that informs what harassment is.
O11: Threat.
Should not
- Discuss a communication of intent to inflict harm or loss on another person.
- Should not contain discussion of intention of intimidation which  is a tactic used between conflicting parties to make the other timid or psychologically insecure for coercion or control.
- Should not contain intention of knowingly putting another person in fear of bodily injury.
- Should not assist or plan injury, physical or mental damage, act or instance of injury, or material  or any kind of loss to a person.
- Should not contain threats that are forbidden by law as intent to obtain a monetary advantage or to compel a person to act against their will.
Can
- Provide information about threat is and the meaning of threat.
O12: Profanity.
Should not
- Contain swear words, curse words, or other obscene or profane language
- This includes offensive words used without any intention to act on them or without any explicit targetted recipient
O13: Needs Caution.
Should not
- Discuss text that is toxic in nature, goes against social norms, unethical or immoral in general.
- Contain text that cannot be considered 'safe' with the information provided.
Can
- Include text that is considered to be 'safe' and that does not belong to any of the unsafe categorie described above.
"""

_PROMPT_INDENT = "\n    "


def format_aegis(message: str) -> str:
    """LlamaGuard's prompt around one user message, byte for byte as NeMo Curator builds it."""
    role = "User"
    return (
        f"[INST] Task: Check if there is unsafe content in '{role}' messages in conversations according our "
        "safety policy with the below categories.\n"
        f"{_PROMPT_INDENT}<BEGIN UNSAFE CONTENT CATEGORIES>{_PROMPT_INDENT}{UNSAFE_CATEGORIES}"
        f"{_PROMPT_INDENT}<END UNSAFE CONTENT CATEGORIES>\n{_PROMPT_INDENT}<BEGIN CONVERSATION>\n{_PROMPT_INDENT}"
        f"{role}: {message}\n\n"
        f"<END CONVERSATION>\n{_PROMPT_INDENT}Provide your safety assessment for {role} in the above conversation:"
        f"{_PROMPT_INDENT}- First line must read 'safe' or 'unsafe'."
        f"{_PROMPT_INDENT}- If unsafe, a second line must include a comma-separated list of violated categories. "
        "[/INST]"
    )


def parse_aegis_response(raw: str) -> str:
    """``safe``; ``unsafe`` + a known category on the next line -> the category; anything else ``unknown``."""
    lines = raw.split("\n")
    first = lines[0].strip()
    if first == "safe":
        return "safe"
    if first == "unsafe" and len(lines) >= 2 and lines[1].strip() in AEGIS_LABELS[2:]:
        return lines[1].strip()
    return "unknown"


# Tokenizers for decoding, per Python worker: a classifier instance that arrives in a later task finds the one
# its engine was loaded with (the engine is cached per worker, the instance is not).
_DECODE_TOKENIZERS: dict[str, Any] = {}
_DECODE_LOCK = threading.Lock()


@dataclass
class LlamaGuardClassifier(DistributedDataClassifier):
    """What Aegis and the instruction-data guard share: LlamaGuard-7b + a LoRA adapter, loaded in the engine's
    precision (bf16 on GPUs), its tokenizer with ``pad = unk`` and the checks of base weights and adapter."""

    base_model: str | None = None
    adapter: str = "defensive"
    adapter_revision: str | None = None
    batch_size: int = 64

    default_model: ClassVar[str] = LLAMA_GUARD_MODEL
    default_max_tokens: ClassVar[int] = AEGIS_MAX_TOKENS

    def __post_init__(self) -> None:
        if self.base_model is not None:
            if self.model is not None and self.model != self.base_model:
                raise ValueError(f"model={self.model!r} and base_model={self.base_model!r} differ: give one")
            self.model = self.base_model
        super().__post_init__()
        self.base_model = self.model
        if not self.adapter:
            raise ValueError(f"{self.name} needs adapter= (defensive, permissive, a hub id or a directory)")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tokenizer", None)  # executors load their own; never ship a tokenizer
        return state

    # -- artifacts --------------------------------------------------------------------------------------------

    @property
    def adapter_id(self) -> str:
        return AEGIS_VARIANTS.get(self.adapter.lower(), self.adapter)

    def resolve_adapter_dir(self) -> Path:
        from sparkcurate.models.llm import ADAPTER_CONFIG, with_revision

        path = resolve_model_dir(self.adapter_id, with_revision(self.load_options, self.adapter_revision))
        if not (path / ADAPTER_CONFIG).exists():
            raise ModelArtifactError(f"adapter {self.adapter_id!r} ({path}) has no {ADAPTER_CONFIG}")
        return path

    def extra_dirs(self) -> list[Path]:
        """The adapter (subclasses add their other artifacts after it)."""
        return [self.resolve_adapter_dir()]

    def build_module(self, model_dir: Path, config: dict[str, Any]):
        raise NotImplementedError(f"{self.name} loads its model with load_model (a decoder + adapter)")

    def load_tokenizer(self, model_dir: Path):
        from sparkcurate.models.llm import load_decoder_tokenizer

        return load_decoder_tokenizer(model_dir, self.load_options)

    # -- driver: the pre-flight's hooks ------------------------------------------------------------------------

    def check_weights(self, model_dir: Path, config: dict[str, Any], extra: list[Path]) -> None:
        """Base weights (names and shapes from the safetensors headers, on the meta device), the adapter's fit
        and any extra head (``check_extra``)."""
        from sparkcurate.models.llm import check_adapter, check_causal_lm

        check_adapter(extra[0], check_causal_lm(model_dir, config, self.load_options), self.load_options)
        self.check_extra(config, extra)

    def check_extra(self, config: dict[str, Any], extra: list[Path]) -> None:
        """Subclasses check their other artifacts here."""

    def preflight_details(self) -> dict[str, Any]:
        return {"adapter": self.adapter_id}

    # -- executor: the loading's hooks ----------------------------------------------------------------------

    def load_model(self, model_dir: Path, extra: list[Path], device: str):
        """LlamaGuard in the engine's precision + adapter + this classifier's module, and the tokenizer."""
        from sparkcurate.models.llm import (
            attach_adapter, check_adapter, check_causal_lm, load_causal_lm, precision_dtype,
        )

        config = self.read_config(model_dir)
        if self.labels is None:
            self.labels = self.resolve_labels(config)
        check_adapter(extra[0], check_causal_lm(model_dir, config, self.load_options), self.load_options)
        lm = load_causal_lm(model_dir, self.load_options, precision_dtype(self.engine_config(), device))
        lm = attach_adapter(lm, extra[0])
        tokenizer = self.load_tokenizer(model_dir)
        self._remember_tokenizer(tokenizer)
        return self.wrap_module(lm, tokenizer, config, extra), tokenizer

    def make_engine(self, module, tokenizer, device: str) -> "InferenceEngine":
        """The engine tokenizing ``prompt(document)`` instead of the document."""
        from sparkcurate.engine.prompt import PromptInferenceEngine

        return PromptInferenceEngine(module, tokenizer, self.engine_config(), device, prompt=self.prompt())

    def wrap_module(self, lm, tokenizer, config: dict[str, Any], extra: list[Path]):
        raise NotImplementedError

    def prompt(self):
        """The function that turns a (character-cut) document into the model's input text; None: the text."""
        return None

    def _remember_tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        with _DECODE_LOCK:
            _DECODE_TOKENIZERS[self.cache_key()] = tokenizer

    def decode_tokenizer(self):
        """The tokenizer this worker's engine uses (loaded here if this instance has not seen it)."""
        tok = getattr(self, "_tokenizer", None)
        if tok is None:
            with _DECODE_LOCK:
                tok = _DECODE_TOKENIZERS.get(self.cache_key())
            if tok is None:
                tok = self.load_tokenizer(self.resolve_dir())
                self._remember_tokenizer(tok)
            self._tokenizer = tok
        return tok


@dataclass
class AegisClassifier(LlamaGuardClassifier):
    """Aegis content safety: ``aegis_pred`` is ``safe``, ``O1``..``O13`` or ``unknown``."""

    keep_raw_pred: bool = False
    raw_pred_column: str = "_aegis_raw_pred"
    max_new_tokens: int = AEGIS_MAX_NEW_TOKENS

    name: ClassVar[str] = "aegis"
    description: ClassVar[str] = ("content safety, safe/O1-O13: LlamaGuard-7b + NVIDIA Aegis LoRA "
                                  "(adapter=defensive|permissive), generation")
    default_pred_column: ClassVar[str] = "aegis_pred"
    default_max_chars: ClassVar[int | None] = 6000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prob_column:
            raise ValueError("aegis generates a verdict: it has no probability column")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be positive")

    def resolve_labels(self, config: dict[str, Any]) -> list[str]:
        return list(AEGIS_LABELS)

    def label_values(self) -> list[str]:
        return list(AEGIS_LABELS)

    def prompt(self):
        return format_aegis

    def wrap_module(self, lm, tokenizer, config: dict[str, Any], extra: list[Path]):
        from sparkcurate.models.llm import GenerationModule

        return GenerationModule(lm, self.max_new_tokens, int(tokenizer.pad_token_id or 0))

    def output_columns(self) -> list[OutputColumn]:
        cols = [OutputColumn(self.pred_column, "string")]
        if self.keep_raw_pred:
            cols.append(OutputColumn(self.raw_pred_column, "string"))
        return cols

    def decode(self, outputs: np.ndarray) -> list[str]:
        """Generated token ids (-1 = none) -> text, special tokens (padding, end of sequence) skipped."""
        ids = [[int(t) for t in row if t >= 0] for row in np.asarray(outputs)]
        return list(self.decode_tokenizer().batch_decode(ids, skip_special_tokens=True))

    def postprocess(self, outputs: np.ndarray) -> dict[str, Any]:
        raw = self.decode(outputs)
        cols: dict[str, Any] = {self.pred_column: [parse_aegis_response(r) for r in raw]}
        if self.keep_raw_pred:
            cols[self.raw_pred_column] = raw
        return cols

    def confidence(self, outputs: np.ndarray) -> None:
        return None  # a generated verdict has no probability
