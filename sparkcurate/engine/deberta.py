"""The DeBERTa-v2/v3 backbone as this package's own small torch modules, built from a config.json dict.

Why: importing transformers' DeBERTa modeling module costs a fresh Python worker ~10 s (it pulls in
``torch.distributed.tensor`` and ``torch._dynamo``; benchmarks/NOTES.md, "Where a worker's load goes"), several
times the model's own load, and the packed engine (:mod:`.deberta_packed`) uses only the modules' weights and a
few attributes. These modules carry the same attribute and parameter names as transformers' ``DebertaV2Model``
(``embeddings.*``, ``encoder.layer.N.attention.self.query_proj``, ``encoder.rel_embeddings``, ...), so a
published checkpoint loads into them strictly and every back-end of the packed forward runs on them unchanged.

Scope: what :func:`config_problems` accepts, the published DeBERTa-v3 classifiers' backbones (relative attention
with log-bucketed positions, c2p/p2c, optional LayerNorm of the position embeddings, exact GELU, no convolution
layer). Anything else keeps transformers' modules (``models.lean``). The padded ``forward`` repeats transformers'
arithmetic operation for operation (after ``transformers.models.deberta_v2.modeling_deberta_v2``, Apache-2.0), so
it serves the CPU, the fp32 rescue of overflowed rows and the tests (tests/test_lean_deberta.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
from torch import nn

#: hidden_act values these modules implement (transformers' "gelu" is the exact, erf GELU).
ACTIVATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}


@dataclass
class DebertaConfig:
    """The fields of a DeBERTa-v2/v3 ``config.json`` these modules read, with transformers' defaults.

    Attribute names are transformers' (``DebertaV2Config``), so code that reads ``backbone.config`` reads either.
    """

    model_type: str = "deberta-v2"
    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pad_token_id: int = 0
    position_biased_input: bool = True
    pos_att_type: list[str] = field(default_factory=list)
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    embedding_size: int | None = None
    attention_head_size: int | None = None
    # Read by transformers only (initialisation, pooler), typed here so that a malformed value is refused the same
    # way whichever modules a job builds (the pre-flight of a GPU job checks the config with these).
    initializer_range: float = 0.02
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    pooler_hidden_size: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DebertaConfig":
        """The config from a ``config.json`` object; unknown keys are ignored (as transformers keeps them unread).

        Raises ``ValueError`` naming the field for a value of the wrong type (the caller adds the file's name).
        """
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            if key not in known or raw is None:  # null: the default, as for a missing key
                continue
            values[key] = _coerce(key, raw, known[key].type)
        config = cls(**values)
        config.pos_att_type = _att_types(data.get("pos_att_type"))
        return config

    @property
    def head_dim(self) -> int:
        return int(self.attention_head_size or self.hidden_size // self.num_attention_heads)

    @property
    def span(self) -> int:
        """Rows of each half of the relative-position table (``pos_ebd_size``)."""
        max_rel = self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings
        return self.position_buckets if self.position_buckets > 0 else max_rel


def _att_types(raw: Any) -> list[str]:
    """``pos_att_type`` as transformers normalises it: a list, from a list or an old ``"p2c|c2p"`` string."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [x.strip() for x in raw.lower().split("|")]
    if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise ValueError(f"field 'pos_att_type' must be a list of strings or a 'p2c|c2p' string, got {raw!r}")


def _coerce(key: str, raw: Any, kind: Any) -> Any:
    """A config value as the type its field declares (ints given as 12.0 are refused, as JSON tools keep them)."""
    text = str(kind)
    if key == "pos_att_type":
        return raw
    if "bool" in text:
        if not isinstance(raw, bool):
            raise ValueError(f"field {key!r} must be true or false, got {raw!r}")
        return raw
    if "int" in text:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"field {key!r} must be an integer, got {raw!r}")
        return raw
    if "float" in text:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"field {key!r} must be a number, got {raw!r}")
        return float(raw)
    if not isinstance(raw, str):
        raise ValueError(f"field {key!r} must be a string, got {raw!r}")
    return raw


def config_problems(config: DebertaConfig) -> list[str]:
    """Why these modules do not build this backbone for the packed engine (empty: they do).

    The same limits as the packed forward's (:func:`.deberta_packed.config_problems`), checked on the config
    before anything is built, plus what the modules themselves implement (activation, model type).
    """
    problems: list[str] = []
    if config.model_type != "deberta-v2":
        problems.append(f"model_type {config.model_type!r} (only deberta-v2, DeBERTa-v2/v3, is built here)")
    if not config.relative_attention:
        problems.append("relative_attention is False")
    unknown = sorted(set(config.pos_att_type) - {"c2p", "p2c"})
    if unknown:
        problems.append(f"pos_att_type has unsupported entries {unknown}")
    if config.position_buckets <= 0:
        problems.append("position_buckets must be > 0")
    if not set(_norm_types(config)) <= {"layer_norm", "none"}:
        problems.append(f"norm_rel_ebd={config.norm_rel_ebd!r}")
    if config.conv_kernel_size > 0:
        problems.append("conv_kernel_size > 0 (the DeBERTa-v2 convolution layer)")
    if config.hidden_act not in ACTIVATIONS:
        problems.append(f"hidden_act {config.hidden_act!r} (built here: {', '.join(ACTIVATIONS)})")
    if config.num_attention_heads <= 0 or config.hidden_size % config.num_attention_heads:
        problems.append(f"hidden_size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads")
    else:
        from sparkcurate.engine.kernels.backends import KERNEL_HEAD_DIMS

        if config.head_dim not in KERNEL_HEAD_DIMS:
            problems.append(f"head dimension {config.head_dim} is not one of {KERNEL_HEAD_DIMS}")
    return problems


def _norm_types(config: DebertaConfig) -> list[str]:
    return [x.strip() for x in str(config.norm_rel_ebd).lower().split("|")]


# --------------------------------------------------------------------------- relative positions


def make_log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa's log-bucketed relative positions, operation for operation as transformers computes them (so a
    bucket edge rounds the same way on every device; tests/test_lean_deberta.py compares the two)."""
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid),
        torch.tensor(mid - 1).type_as(relative_pos),
        torch.abs(relative_pos),
    )
    log_pos = (
        torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    )
    return torch.where(abs_pos <= mid, relative_pos.type_as(log_pos), log_pos * sign)


def build_relative_position(query_layer: torch.Tensor, key_layer: torch.Tensor, bucket_size: int = -1,
                            max_position: int = -1) -> torch.Tensor:
    """``[1, queries, keys]`` bucketed distances ``i - j`` (transformers' ``build_relative_position``)."""
    query_size, key_size = query_layer.size(-2), key_layer.size(-2)
    q_ids = torch.arange(query_size, dtype=torch.long, device=query_layer.device)
    k_ids = torch.arange(key_size, dtype=torch.long, device=key_layer.device)
    rel_pos_ids = q_ids[:, None] - k_ids[None, :]
    if bucket_size > 0 and max_position > 0:
        rel_pos_ids = make_log_bucket_position(rel_pos_ids, bucket_size, max_position)
    return rel_pos_ids.to(torch.long)[:query_size, :].unsqueeze(0)


def _scaled_size_sqrt(layer: torch.Tensor, scale_factor: int) -> torch.Tensor:
    return torch.sqrt(torch.tensor(layer.size(-1), dtype=torch.float) * scale_factor)


# --------------------------------------------------------------------------- modules


class DisentangledSelfAttention(nn.Module):
    """Q/K/V projections and the relative-position terms of one layer (transformers' attribute names)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.key_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.value_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.share_att_key = config.share_att_key
        self.pos_att_type = list(config.pos_att_type)
        self.relative_attention = config.relative_attention
        self.position_buckets = config.position_buckets
        self.max_relative_positions = (config.max_relative_positions if config.max_relative_positions >= 1
                                       else config.max_position_embeddings)
        self.pos_ebd_size = config.span
        self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
        if not self.share_att_key:
            if "c2p" in self.pos_att_type:
                self.pos_key_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
            if "p2c" in self.pos_att_type:
                self.pos_query_proj = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def transpose_for_scores(self, x: torch.Tensor, attention_heads: int) -> torch.Tensor:
        """``[B, L, heads * d] -> [B * heads, L, d]``."""
        x = x.view(x.size()[:-1] + (attention_heads, -1))
        return x.permute(0, 2, 1, 3).contiguous().view(-1, x.size(1), x.size(-1))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                relative_pos: torch.Tensor | None = None,
                rel_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Padded attention: ``[B, L, H]`` and a ``[B, 1, L, L]`` mask -> (context ``[B, L, heads * d]``, None)."""
        heads = self.num_attention_heads
        query_layer = self.transpose_for_scores(self.query_proj(hidden_states), heads)
        key_layer = self.transpose_for_scores(self.key_proj(hidden_states), heads)
        value_layer = self.transpose_for_scores(self.value_proj(hidden_states), heads)
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        scale = _scaled_size_sqrt(query_layer, scale_factor)
        scores = torch.bmm(query_layer, key_layer.transpose(-1, -2) / scale.to(dtype=query_layer.dtype))
        if self.relative_attention:
            rel_att = self._position_bias(query_layer, key_layer, relative_pos, self.pos_dropout(rel_embeddings),
                                          scale_factor)
            scores = scores + rel_att
        scores = scores.view(-1, heads, scores.size(-2), scores.size(-1))
        scores = scores.masked_fill(~attention_mask.bool(), torch.finfo(query_layer.dtype).min)
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.bmm(probs.view(-1, probs.size(-2), probs.size(-1)), value_layer)
        context = context.view(-1, heads, context.size(-2), context.size(-1)).permute(0, 2, 1, 3).contiguous()
        return context.view(context.size()[:-2] + (-1,)), None

    def _position_bias(self, query_layer: torch.Tensor, key_layer: torch.Tensor, relative_pos: torch.Tensor | None,
                       rel_embeddings: torch.Tensor, scale_factor: int) -> torch.Tensor | int:
        """c2p + p2c scores (transformers' ``disentangled_attention_bias`` for equal query and key lengths)."""
        if relative_pos is None:
            relative_pos = build_relative_position(query_layer, key_layer, self.position_buckets,
                                                   self.max_relative_positions)
        if relative_pos.dim() == 2:
            relative_pos = relative_pos.unsqueeze(0).unsqueeze(0)
        elif relative_pos.dim() == 3:
            relative_pos = relative_pos.unsqueeze(1)
        span = self.pos_ebd_size
        relative_pos = relative_pos.to(device=query_layer.device, dtype=torch.long)
        rel_embeddings = rel_embeddings[0: span * 2, :].unsqueeze(0)
        repeat = query_layer.size(0) // self.num_attention_heads
        score: torch.Tensor | int = 0
        if "c2p" in self.pos_att_type:
            proj = self.key_proj if self.share_att_key else self.pos_key_proj
            pos_key = self.transpose_for_scores(proj(rel_embeddings), self.num_attention_heads).repeat(repeat, 1, 1)
            c2p = torch.bmm(query_layer, pos_key.transpose(-1, -2))
            c2p_pos = torch.clamp(relative_pos + span, 0, span * 2 - 1)
            c2p = torch.gather(c2p, dim=-1, index=c2p_pos.squeeze(0).expand(
                [query_layer.size(0), query_layer.size(1), relative_pos.size(-1)]))
            score = score + c2p / _scaled_size_sqrt(pos_key, scale_factor).to(dtype=c2p.dtype)
        if "p2c" in self.pos_att_type:
            proj = self.query_proj if self.share_att_key else self.pos_query_proj
            pos_query = self.transpose_for_scores(proj(rel_embeddings), self.num_attention_heads).repeat(repeat, 1, 1)
            p2c_pos = torch.clamp(-relative_pos + span, 0, span * 2 - 1)
            p2c = torch.bmm(key_layer, pos_query.transpose(-1, -2))
            p2c = torch.gather(p2c, dim=-1, index=p2c_pos.squeeze(0).expand(
                [query_layer.size(0), key_layer.size(-2), key_layer.size(-2)])).transpose(-1, -2)
            score = score + p2c / _scaled_size_sqrt(pos_query, scale_factor).to(dtype=p2c.dtype)
        return score


class SelfOutput(nn.Module):
    """``LayerNorm(dense(context) + input)`` after the attention (transformers' ``DebertaV2SelfOutput``)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class Output(SelfOutput):
    """``LayerNorm(dense(inner) + input)`` after the feed-forward block (transformers' ``DebertaV2Output``)."""

    def __init__(self, config: DebertaConfig):
        nn.Module.__init__(self)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


class Intermediate(nn.Module):
    """``gelu(dense(x))`` (transformers' ``DebertaV2Intermediate``; its "gelu" is ``nn.GELU()``'s erf form)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = nn.GELU(approximate=ACTIVATIONS[config.hidden_act])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class Attention(nn.Module):
    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = SelfOutput(config)


class Layer(nn.Module):
    """One encoder layer: attention (``attention.self``, ``attention.output``), ``intermediate``, ``output``."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, relative_pos: torch.Tensor,
                rel_embeddings: torch.Tensor | None) -> torch.Tensor:
        context, _ = self.attention.self(hidden_states, attention_mask, relative_pos=relative_pos,
                                         rel_embeddings=rel_embeddings)
        attention_output = self.attention.output(context, hidden_states)
        return self.output(self.intermediate(attention_output), attention_output)


def _embedding(rows: int, width: int, padding_idx: int | None = None) -> nn.Embedding:
    """An ``nn.Embedding`` whose weight is left uninitialised (``torch.empty``; a meta tensor under
    ``torch.device("meta")``): the strict load assigns every tensor.

    Why: ``nn.Embedding``'s random init on the meta device runs through torch's Python reference kernels, whose
    first call imports ``torch._dynamo``: 4 s of a fresh worker's load, measured, for values never used.
    """
    return nn.Embedding(rows, width, padding_idx=padding_idx, _weight=torch.empty(rows, width))


class Embeddings(nn.Module):
    """Word (+ absolute position, token type) embeddings, projection and LayerNorm (``DebertaV2Embeddings``)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        size = config.embedding_size or config.hidden_size
        self.word_embeddings = _embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        self.position_biased_input = config.position_biased_input
        self.position_embeddings = (_embedding(config.max_position_embeddings, size)
                                    if config.position_biased_input else None)
        self.token_type_embeddings = (_embedding(config.type_vocab_size, size)
                                      if config.type_vocab_size > 0 else None)
        self.embed_proj = nn.Linear(size, config.hidden_size, bias=False) if size != config.hidden_size else None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, H]``; ``position_ids`` default to ``0..L-1``; ``mask`` zeroes padded rows."""
        embeddings = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = torch.arange(input_ids.size(1), device=input_ids.device)[None]
            embeddings = embeddings + self.position_embeddings(position_ids.long())
        if self.token_type_embeddings is not None:  # token type 0 everywhere, as transformers defaults it
            embeddings = embeddings + self.token_type_embeddings(torch.zeros_like(input_ids))
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if mask is not None:
            embeddings = embeddings * mask.unsqueeze(2).to(embeddings.dtype)
        return self.dropout(embeddings)


class Encoder(nn.Module):
    """The layers, the shared relative-position embeddings and their optional LayerNorm (``DebertaV2Encoder``)."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        self.layer = nn.ModuleList([Layer(config) for _ in range(config.num_hidden_layers)])
        self.relative_attention = config.relative_attention
        self.max_relative_positions = (config.max_relative_positions if config.max_relative_positions >= 1
                                       else config.max_position_embeddings)
        self.position_buckets = config.position_buckets
        self.rel_embeddings = _embedding(config.span * 2, config.hidden_size)
        self.norm_rel_ebd = _norm_types(config)
        if "layer_norm" in self.norm_rel_ebd:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine=True)
        self.conv = None  # config_problems refuses the convolution layer

    def get_rel_embedding(self) -> torch.Tensor:
        rel = self.rel_embeddings.weight
        return self.LayerNorm(rel) if "layer_norm" in self.norm_rel_ebd else rel

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Padded forward: ``[B, L, H]`` and the ``[B, L]`` mask -> the last hidden state ``[B, L, H]``."""
        extended = attention_mask.unsqueeze(1).unsqueeze(2)
        pair_mask = extended * extended.squeeze(-2).unsqueeze(-1)
        relative_pos = build_relative_position(hidden_states, hidden_states, self.position_buckets,
                                               self.max_relative_positions)
        rel_embeddings = self.get_rel_embedding()
        for layer in self.layer:
            hidden_states = layer(hidden_states, pair_mask, relative_pos, rel_embeddings)
        return hidden_states


@dataclass
class BackboneOutput:
    """What a head reads of the backbone's padded forward (transformers' ``BaseModelOutput`` field name)."""

    last_hidden_state: torch.Tensor


class DebertaBackbone(nn.Module):
    """A DeBERTa-v2/v3 encoder with transformers' parameter names (``embeddings.*``, ``encoder.*``), no pooler."""

    def __init__(self, config: DebertaConfig):
        super().__init__()
        problems = config_problems(config)
        if problems:
            raise ValueError("this DeBERTa config is not built by sparkcurate's modules: " + "; ".join(problems))
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.z_steps = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BackboneOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embeddings(input_ids, mask=attention_mask)
        return BackboneOutput(self.encoder(hidden, attention_mask))


def describe(config: DebertaConfig) -> str:
    """A short description for logs: layers x hidden, heads."""
    return (f"DeBERTa {config.num_hidden_layers}x{config.hidden_size}, {config.num_attention_heads} heads "
            f"(head dim {config.head_dim}, {2 * config.span} position rows)")
