# Copyright 2026 The FAT5 Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""PyTorch FAT5 (Flash Attention T5) model: T5 with alternative position encodings and kernel-friendly attention."""

import copy
import importlib.util
import math
from collections.abc import Callable

import torch
import transformers.initialization as init
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers.activations import ACT2FN  # noqa: F401 (used by the T5 code the converter copies)
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    QuestionAnsweringModelOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.t5.modeling_t5 import (
    T5ClassificationHead,
    T5DenseActDense,
    T5DenseGatedActDense,
    T5LayerFF,
    T5LayerNorm,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_flash_t5 import FlashT5Config


logger = logging.get_logger(__name__)

# transformers renamed the cache argument and output field from `past_key_values` to `cache`; support both. Before the
# rename its `generate` passes `past_key_values`, which is then no deprecated use: deprecate_kwarg takes it as `cache`
# without a warning when its removal version is taken as reached.
_CACHE_RENAMED = "cache" in Seq2SeqLMOutput.__dataclass_fields__
_CACHE_OUTPUT_FIELD = "cache" if _CACHE_RENAMED else "past_key_values"
_PAST_KEY_VALUES_REMOVAL = "5.40.0" if _CACHE_RENAMED else "5.0.0"


class FlashT5LayerNorm(T5LayerNorm):
    pass


class FlashT5DenseActDense(T5DenseActDense):
    pass


class FlashT5DenseGatedActDense(T5DenseGatedActDense):
    def forward(self, hidden_states):
        hidden_states = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.wo(hidden_states.to(self.wo.weight.dtype))


class FlashT5LayerFF(T5LayerFF):
    pass


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """
    T5's bucketing of `key_position - query_position`: exact buckets for small distances, logarithmic ones up to
    `max_distance`, one bucket beyond. Bidirectional bucketing gives each side half of the buckets; otherwise keys after
    the query share bucket 0.
    """
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    return relative_buckets + torch.where(is_small, relative_position, relative_position_if_large)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's geometric slopes; head counts that are not a power of two interleave those of the next power."""
    closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-8.0 / closest_power_of_2)
    slopes = [base ** (i + 1) for i in range(closest_power_of_2)]
    if closest_power_of_2 < num_heads:
        slopes += alibi_slopes(2 * closest_power_of_2)[0::2][: num_heads - closest_power_of_2]
    return slopes


class FlashT5FIRE(nn.Module):
    """
    FIRE (Li et al., 2023, "Functional Interpolation for Relative Positions"): an MLP maps the log-compressed relative
    distance, normalised by the log-compressed query position (floored at a learned threshold), to one bias per head.
    """

    def __init__(self, config: FlashT5Config):
        super().__init__()
        self.mlp_in = nn.Linear(1, config.fire_hidden_size)
        self.mlp_out = nn.Linear(config.fire_hidden_size, config.num_heads)
        # One-element vectors, not scalars: FSDP2's `fully_shard` refuses 0-dim parameters. Checkpoints keep them as
        # scalars, as the reference's do (`weight_conversion.weight_conversions`).
        self.distance_scale = nn.Parameter(torch.tensor([0.1]))
        self.threshold = nn.Buffer(torch.tensor(float(config.relative_attention_max_distance)))
        self.threshold_multiplier = nn.Parameter(torch.tensor([1.0]))
        self.eps = 1e-6

    def forward(self, query_length, key_length, past_seen_tokens=0, device=None):
        query_position = torch.arange(query_length, dtype=torch.float32, device=device) + past_seen_tokens
        key_position = torch.arange(key_length, dtype=torch.float32, device=device)
        distance = query_position[:, None] - key_position[None, :]
        distance = torch.sign(distance) * torch.log(torch.abs(self.distance_scale * distance) + 1)
        normalizer = torch.max(query_position, torch.abs(self.threshold_multiplier * self.threshold))
        normalizer = torch.log(torch.abs(self.distance_scale * normalizer) + 1)[:, None] + self.eps
        normalized_distance = (distance / normalizer).unsqueeze(-1).to(self.mlp_in.weight.dtype)
        bias = self.mlp_out(nn.functional.relu(self.mlp_in(normalized_distance)))
        return bias.permute(2, 0, 1).unsqueeze(0)


def rotary_cos_sin(config: FlashT5Config, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotary angles, (len(positions), rotary_dim // 2), in fp32."""
    rotary_dim = int(config.d_kv * config.rotary_fraction)
    inv_freq = 1.0 / (
        config.rotary_base
        ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=positions.device) / rotary_dim)
    )
    angles = torch.outer(positions.float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotates the first `2 * cos.shape[-1]` dimensions of (batch, heads, seq, head_dim) states; leaves the rest."""
    rotary_dim = 2 * cos.shape[-1]
    rotated, passed = states[..., :rotary_dim].float(), states[..., rotary_dim:]
    if interleaved:
        first, second = rotated[..., 0::2], rotated[..., 1::2]
    else:
        first, second = rotated.chunk(2, dim=-1)
    first, second = first * cos - second * sin, first * sin + second * cos
    if interleaved:
        rotated = torch.stack((first, second), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((first, second), dim=-1)
    return torch.cat((rotated.to(states.dtype), passed), dim=-1)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: Unpack[TransformersKwargs],
):
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        attn_weights = attn_weights + position_bias
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights.float(), dim=-1).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class FlashT5Attention(nn.Module):
    def __init__(
        self,
        config: FlashT5Config,
        has_position_bias: bool = False,
        layer_idx: int | None = None,
        is_causal: bool = False,
        is_cross_attention: bool = False,
    ):
        super().__init__()
        self.config = config
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.key_value_proj_dim = config.d_kv
        self.n_heads = config.num_heads
        # T5 drops attention probabilities at `dropout_rate`; FAT5 checkpoints may set their own rate.
        self.dropout = config.dropout_rate if config.attention_dropout_rate is None else config.attention_dropout_rate
        self.inner_dim = self.n_heads * self.key_value_proj_dim
        self.scaling = config.attention_scale
        # Positions enter self-attention only; cross-attention sees the encoder's states without a position signal,
        # unless `rotary_value_and_cross_attention` has the stack hand it rotary embeddings.
        self.position_encoding_type = None if is_cross_attention else config.position_encoding_type
        self.has_position_bias = has_position_bias and self.position_encoding_type in ("t5", "alibi", "fire")
        # CODEPATH: asymmetric ALiBi checkpoints; those of the reference implementation are asymmetric in the causal
        # decoder too, where the heads that look forwards see only their own position.
        self.alibi_asymmetric = config.alibi_mode == "asymmetric" and (
            not is_causal or config.alibi_asymmetric_decoder
        )

        self.q = nn.Linear(config.hidden_size, self.inner_dim, bias=False)
        self.k = nn.Linear(config.hidden_size, self.inner_dim, bias=False)
        self.v = nn.Linear(config.hidden_size, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, config.hidden_size, bias=False)

        if self.has_position_bias and self.position_encoding_type == "t5":
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, self.n_heads)
        if self.has_position_bias and self.position_encoding_type == "fire":
            self.fire = FlashT5FIRE(config)

    def compute_position_bias(self, query_length, key_length, past_seen_tokens, device):
        """The stack's shared position bias, built by its first layer: a (1, heads, query, key) tensor."""
        query_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None] + past_seen_tokens
        key_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        distance = key_position - query_position
        if self.position_encoding_type == "t5":
            buckets = relative_position_bucket(
                distance,
                bidirectional=not self.is_causal,
                num_buckets=self.config.relative_attention_num_buckets,
                max_distance=self.config.relative_attention_max_distance,
            )
            return self.relative_attention_bias(buckets).permute([2, 0, 1]).unsqueeze(0)
        if self.position_encoding_type == "fire":
            return self.fire(query_length, key_length, past_seen_tokens, device=device)
        bias = -self.alibi_head_slopes(device)[:, None, None] * distance.abs()
        # CODEPATH: symmetric ALiBi checkpoints, and the decoders of native asymmetric ones (causal: one side left).
        if not self.alibi_asymmetric:
            return bias.unsqueeze(0)
        # Asymmetric: the first half of the heads looks only backwards, the second half only forwards.
        half = self.n_heads // 2
        blocked = torch.cat([(distance > 0).expand(half, -1, -1), (distance < 0).expand(half, -1, -1)])
        return bias.masked_fill(blocked, float("-inf")).unsqueeze(0)

    def alibi_head_slopes(self, device) -> torch.Tensor:
        """(heads,) ALiBi slopes in fp32; asymmetric ALiBi gives each half of the heads the slopes of a model of half
        as many heads."""
        heads = self.n_heads // 2 if self.alibi_asymmetric else self.n_heads
        slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32, device=device)
        return slopes.repeat(self.n_heads // heads)

    def fat5_attention(
        self,
        attention_interface,
        query_states,
        key_states,
        value_states,
        mask,
        position_bias,
        past_seen_tokens,
        **kwargs,
    ):
        """
        The call of the `fat5` Triton attention (the plugin's; not part of the in-tree model). Where it computes the
        position bias in place (all but decode steps), it takes the bias's parameters: the T5 bucket table or the
        ALiBi slopes, never a (query x key) tensor. It also takes the queries' offset among the keys of a cache.
        """
        query_length, key_length = query_states.shape[-2], key_states.shape[-2]
        if position_bias is None and self.has_position_bias:
            in_kernel = attention_interface.computes_position_bias(query_length, key_length)
            if in_kernel and self.position_encoding_type == "t5":
                # A copy, not the parameter: the later layers read it after this layer's forward, when FSDP has freed
                # the parameters it gathered for this layer.
                position_bias = self.relative_attention_bias.weight.clone()
            elif in_kernel and self.position_encoding_type == "alibi":
                position_bias = self.alibi_head_slopes(query_states.device)
            else:
                position_bias = self.compute_position_bias(
                    query_length, key_length, past_seen_tokens, query_states.device
                )

        bias_kwargs = {"position_bias": None}
        if position_bias is not None and position_bias.dim() == 2:
            bias_kwargs = {
                "relative_attention_bias": position_bias,
                "relative_attention_num_buckets": self.config.relative_attention_num_buckets,
                "relative_attention_max_distance": self.config.relative_attention_max_distance,
                "bidirectional": not self.is_causal,
            }
        elif position_bias is not None and position_bias.dim() == 1:
            bias_kwargs = {"alibi_slopes": position_bias, "alibi_asymmetric": self.alibi_asymmetric}
        elif position_bias is not None:
            bias_kwargs = {
                "position_bias": position_bias.to(query_states.dtype).expand(query_states.shape[0], -1, -1, -1)
            }
        if self.is_causal:
            # Where the queries sit among the keys, for the causal mask and the position bias: a static cache holds
            # more keys than the tokens seen so far. Bidirectional self-attention has no cache: its queries are its
            # keys, which is what attention functions assume without an offset.
            bias_kwargs["query_offset"] = past_seen_tokens
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling,
            is_causal=self.is_causal,
            **bias_kwargs,
            **kwargs,
        )
        return attn_output, position_bias, attn_weights

    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        hidden_states,
        mask=None,
        key_value_states=None,
        position_bias=None,
        position_embeddings=None,
        key_position_embeddings=None,
        query_segment_ids=None,
        key_segment_ids=None,
        cache=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """
        `position_embeddings` are the rotary (cos, sin) of the query positions, and of the key positions in
        self-attention; `key_position_embeddings` those of the cross-attention's keys (the encoder positions).
        `query_segment_ids` and `key_segment_ids` mark the examples of packed rows: the mask already keeps them
        apart, and attention functions that mask in place (fused kernels) take them instead of a dense mask.
        """
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.key_value_proj_dim)
        past_seen_tokens = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        # A static cache counts its tokens in a tensor that its update below increments in place.
        if isinstance(past_seen_tokens, torch.Tensor):
            past_seen_tokens = past_seen_tokens.clone()

        query_states = self.q(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_embeddings is not None:
            query_states = apply_rotary(query_states, *position_embeddings, self.config.rotary_interleaved)

        is_updated = False
        curr_cache = cache
        if isinstance(cache, EncoderDecoderCache):
            is_updated = cache.is_updated.get(self.layer_idx)
            curr_cache = cache.cross_attention_cache if self.is_cross_attention else cache.self_attention_cache

        current_states = key_value_states if self.is_cross_attention else hidden_states
        if self.is_cross_attention and cache is not None and is_updated:
            key_states = curr_cache.layers[self.layer_idx].keys
            value_states = curr_cache.layers[self.layer_idx].values
        else:
            kv_shape = (*current_states.shape[:-1], -1, self.key_value_proj_dim)
            key_states = self.k(current_states).view(kv_shape).transpose(1, 2)
            value_states = self.v(current_states).view(kv_shape).transpose(1, 2)
            if not self.is_cross_attention:
                key_position_embeddings = position_embeddings
            if key_position_embeddings is not None:
                key_states = apply_rotary(key_states, *key_position_embeddings, self.config.rotary_interleaved)
                # CODEPATH: RoPE checkpoints of the reference implementation rotate the values too.
                if self.config.rotary_value_and_cross_attention:
                    value_states = apply_rotary(value_states, *key_position_embeddings, self.config.rotary_interleaved)
            if cache is not None:
                key_states, value_states = curr_cache.update(key_states, value_states, self.layer_idx)
                if self.is_cross_attention and isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if query_segment_ids is not None:
            # Packed rows: the mask keeps the examples apart; kernels that mask in place take the segments instead.
            kwargs.update(query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids)
        if fat5_attention_in_use(attention_interface):
            attn_output, position_bias, attn_weights = self.fat5_attention(
                attention_interface,
                query_states,
                key_states,
                value_states,
                mask,
                position_bias,
                past_seen_tokens,
                **kwargs,
            )
            return self.o(attn_output.reshape(*input_shape, -1).contiguous()), position_bias, attn_weights

        if position_bias is None and self.has_position_bias:
            position_bias = self.compute_position_bias(
                input_shape[1], key_states.shape[-2], past_seen_tokens, query_states.device
            )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling,
            is_causal=self.is_causal,
            # A view over the batch: flex attention indexes the bias by batch.
            position_bias=None
            if position_bias is None
            else position_bias.to(query_states.dtype).expand(query_states.shape[0], -1, -1, -1),
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o(attn_output)
        return attn_output, position_bias, attn_weights


class FlashT5LayerSelfAttention(nn.Module):
    def __init__(self, config, has_position_bias=False, layer_idx: int | None = None):
        super().__init__()
        self.SelfAttention = FlashT5Attention(
            config, has_position_bias=has_position_bias, layer_idx=layer_idx, is_causal=config.is_decoder
        )
        self.layer_norm = FlashT5LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_bias=None,
        position_embeddings=None,
        segment_ids=None,
        cache=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        attention_output, position_bias, attn_weights = self.SelfAttention(
            self.layer_norm(hidden_states),
            mask=attention_mask,
            position_bias=position_bias,
            position_embeddings=position_embeddings,
            query_segment_ids=segment_ids,
            key_segment_ids=segment_ids,
            cache=cache,
            **kwargs,
        )
        return hidden_states + self.dropout(attention_output), position_bias, attn_weights


class FlashT5LayerCrossAttention(nn.Module):
    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        self.EncDecAttention = FlashT5Attention(config, layer_idx=layer_idx, is_cross_attention=True)
        self.layer_norm = FlashT5LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        hidden_states,
        key_value_states,
        attention_mask=None,
        position_embeddings=None,
        key_position_embeddings=None,
        segment_ids=None,
        encoder_segment_ids=None,
        cache=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        attention_output, _, attn_weights = self.EncDecAttention(
            self.layer_norm(hidden_states),
            mask=attention_mask,
            key_value_states=key_value_states,
            position_embeddings=position_embeddings,
            key_position_embeddings=key_position_embeddings,
            query_segment_ids=segment_ids,
            key_segment_ids=encoder_segment_ids,
            cache=cache,
            **kwargs,
        )
        return hidden_states + self.dropout(attention_output), attn_weights


class FlashT5Block(GradientCheckpointingLayer):
    def __init__(self, config, has_position_bias=False, layer_idx: int | None = None):
        super().__init__()
        self.is_decoder = config.is_decoder
        self.layer = nn.ModuleList()
        self.layer.append(FlashT5LayerSelfAttention(config, has_position_bias=has_position_bias, layer_idx=layer_idx))
        if self.is_decoder:
            self.layer.append(FlashT5LayerCrossAttention(config, layer_idx=layer_idx))
        self.layer.append(FlashT5LayerFF(config))

    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_bias=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        position_embeddings=None,
        encoder_position_embeddings=None,
        segment_ids=None,
        encoder_segment_ids=None,
        cache=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """`encoder_position_embeddings`: the rotary (cos, sin) of the encoder positions, given only when the
        cross-attention is rotated too (`rotary_value_and_cross_attention`). `segment_ids` and
        `encoder_segment_ids`: the examples of packed rows, for the attention functions that mask in place."""
        hidden_states, position_bias, _ = self.layer[0](
            hidden_states,
            attention_mask=attention_mask,
            position_bias=position_bias,
            position_embeddings=position_embeddings,
            segment_ids=segment_ids,
            cache=cache,
            **kwargs,
        )
        if self.is_decoder and encoder_hidden_states is not None:
            hidden_states, _ = self.layer[1](
                hidden_states,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                position_embeddings=position_embeddings if encoder_position_embeddings is not None else None,
                key_position_embeddings=encoder_position_embeddings,
                segment_ids=segment_ids,
                encoder_segment_ids=encoder_segment_ids,
                cache=cache,
                **kwargs,
            )
        hidden_states = self.layer[-1](hidden_states)
        return hidden_states, position_bias


class FlashT5ClassificationHead(T5ClassificationHead):
    pass


def check_token_inputs(input_ids, attention_mask, inputs_embeds, name=""):
    """Rejects inputs whose dtype or shape would otherwise fail deep inside the model, or silently mislead it."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"You must specify exactly one of {name}input_ids or {name}inputs_embeds.")
    if input_ids is not None:
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"`{name}input_ids` must hold integer token ids, got dtype {input_ids.dtype}.")
        if input_ids.dim() != 2:
            raise ValueError(
                f"`{name}input_ids` must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}."
            )
        batch_and_length = tuple(input_ids.shape)
    else:
        if inputs_embeds.dim() != 3:
            raise ValueError(
                f"`{name}inputs_embeds` must have shape (batch_size, sequence_length, d_model), got "
                f"{tuple(inputs_embeds.shape)}."
            )
        batch_and_length = tuple(inputs_embeds.shape[:2])
    batch_size, length = batch_and_length
    if batch_size == 0 or length == 0:
        given, tensor = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
        raise ValueError(
            f"`{name}{given}` has shape {tuple(tensor.shape)}: the model needs at least one sequence of at least one "
            "token."
        )
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor) and name:
        # Flex attention's `generate` with a compilable cache hands the decoder a prepared `BlockMask`.
        return
    if attention_mask is not None and attention_mask.dim() == 4 and name:
        # `generate` with a compilable cache (`cache_implementation="static"`) hands the decoder a prepared 4D mask,
        # (batch, 1, new tokens, cache length).
        if attention_mask.shape[0] != batch_size or attention_mask.shape[1] != 1 or attention_mask.shape[2] != length:
            raise ValueError(
                f"A 4D `{name}attention_mask` must have shape (batch_size, 1, sequence_length, key_length) with "
                f"(batch_size, sequence_length) = {batch_and_length}, got {tuple(attention_mask.shape)}."
            )
    elif attention_mask is not None:
        # A decoder's mask also covers the tokens already in its cache: it may be longer than the new inputs.
        if (
            attention_mask.dim() != 2
            or attention_mask.shape[0] != batch_size
            or attention_mask.shape[1] < length
            or (attention_mask.shape[1] != length and not name)
        ):
            raise ValueError(
                f"`{name}attention_mask` must have shape (batch_size, sequence_length) = {batch_and_length}"
                f"{' or cover the cached tokens too' if name else ''}, got {tuple(attention_mask.shape)}."
            )
        if attention_mask.dtype.is_complex:
            raise TypeError(
                f"`{name}attention_mask` must be boolean or integer (1 = attend), got {attention_mask.dtype}."
            )


def same_segment_mask_function(query_segment_ids: torch.Tensor, key_segment_ids: torch.Tensor) -> Callable:
    """transformers mask function of packed rows: a query sees only the keys of its own example."""

    def same_segment(batch_idx, head_idx, q_idx, kv_idx):
        return query_segment_ids[batch_idx, q_idx] == key_segment_ids[batch_idx, kv_idx]

    return same_segment


def check_decoder_segments(segment_ids: torch.Tensor | None, decoder_segment_ids: torch.Tensor | None):
    if (segment_ids is None) != (decoder_segment_ids is None):
        raise ValueError(
            "Packed rows need both `segment_ids` (inputs) and `decoder_segment_ids` (targets), or neither: the "
            "targets of each example attend to its own inputs."
        )


def check_packed_rows(config: FlashT5Config, segment_ids: torch.Tensor, tokens: torch.Tensor):
    """Refuses segment ids that do not describe the tokens' rows, and position encodings that packing would change."""
    if segment_ids.shape != tokens.shape[:2] or segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise ValueError(
            f"`segment_ids` must hold integer example ids of shape (batch_size, sequence_length) = "
            f"{tuple(tokens.shape[:2])}, got {segment_ids.dtype} of shape {tuple(segment_ids.shape)}."
        )
    # CODEPATH: FIRE checkpoints normalise by each query's absolute position, which packing moves.
    if config.position_encoding_type == "fire":
        raise ValueError(
            "Packed rows (`segment_ids`) cannot carry FIRE's position bias, a function of each query's position in "
            "its sequence: train FIRE models on padded batches."
        )
    # CODEPATH: RoPE checkpoints of the reference implementation rotate the values by their absolute positions.
    if config.rotary_value_and_cross_attention:
        raise ValueError(
            "Packed rows (`segment_ids`) cannot carry `rotary_value_and_cross_attention`, which rotates values and "
            "cross-attention by absolute positions: train such models on padded batches."
        )


@auto_docstring
class FlashT5PreTrainedModel(PreTrainedModel):
    config: FlashT5Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True

    _no_split_modules = ["FlashT5Block"]
    _keep_in_fp32_modules = ["wo"]
    _supports_flash_attn = False
    _supports_flex_attn = True
    _supports_sdpa = True
    _can_compile_fullgraph = True

    _can_record_outputs = {
        "hidden_states": OutputRecorder(FlashT5Block, index=0),
        "attentions": OutputRecorder(FlashT5LayerSelfAttention, index=-1),
        "cross_attentions": OutputRecorder(FlashT5LayerCrossAttention, index=-1),
    }

    # The stacks embed with the model's `shared` module whatever `tie_word_embeddings` says: that flag decides only
    # whether the LM head is tied too.
    _shared_embedding_keys: dict[str, str] = {}
    _head_names = ("qa_outputs", "classifier")

    @classmethod
    def is_custom_code(cls) -> bool:
        # A model outside transformers' package counts as custom code, whose modules without parameters of their own
        # (the attention and feed-forward layers) transformers never initialises: FAT5 is written as in-tree code.
        return cls.is_remote_code()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        tied_weights_keys = super().get_expanded_tied_weights_keys(all_submodels=all_submodels)
        if not all_submodels:
            tied_weights_keys.update(self._shared_embedding_keys)
        return tied_weights_keys

    @torch.no_grad()
    def _init_weights(self, module):
        # Modules are initialised children first: the branches below, on the layers, then give their Linears T5's
        # per-layer scales over the generic ones.
        super()._init_weights(module)
        factor = self.config.initializer_factor
        d_model, d_ff = self.config.hidden_size, self.config.intermediate_size
        # The span and token heads are matched by identity: they are created after the encoder's own `post_init`, so
        # a branch on the model module (initialised then) would never reach them.
        if isinstance(module, nn.Linear) and any(module is getattr(self, name, None) for name in self._head_names):
            init.normal_(module.weight, mean=0.0, std=factor * d_model**-0.5)
            init.zeros_(module.bias)
        elif isinstance(module, FlashT5LayerNorm):
            init.constant_(module.weight, factor * 1.0)
        elif hasattr(module, "shared"):
            init.normal_(module.shared.weight, mean=0.0, std=factor * 1.0)
            if hasattr(module, "lm_head") and not self.config.tie_word_embeddings:
                init.normal_(module.lm_head.weight, mean=0.0, std=factor * 1.0)
        elif isinstance(module, FlashT5ClassificationHead):
            init.normal_(module.dense.weight, mean=0.0, std=factor * d_model**-0.5)
            init.zeros_(module.dense.bias)
            init.normal_(module.out_proj.weight, mean=0.0, std=factor * d_model**-0.5)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, FlashT5DenseActDense):
            init.normal_(module.wi.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.wo.weight, mean=0.0, std=factor * d_ff**-0.5)
        elif isinstance(module, FlashT5DenseGatedActDense):
            init.normal_(module.wi_0.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.wi_1.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.wo.weight, mean=0.0, std=factor * d_ff**-0.5)
        elif isinstance(module, FlashT5FIRE):
            init.normal_(module.mlp_in.weight, mean=0.0, std=factor)
            init.zeros_(module.mlp_in.bias)
            init.normal_(module.mlp_out.weight, mean=0.0, std=factor * self.config.fire_hidden_size**-0.5)
            init.zeros_(module.mlp_out.bias)
            init.constant_(module.distance_scale, 0.1)
            init.constant_(module.threshold, float(self.config.relative_attention_max_distance))
            init.constant_(module.threshold_multiplier, 1.0)
        elif isinstance(module, FlashT5Attention):
            d_kv, n_heads = self.config.d_kv, self.config.num_heads
            init.normal_(module.q.weight, mean=0.0, std=factor * (d_model * d_kv) ** -0.5)
            init.normal_(module.k.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.v.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.o.weight, mean=0.0, std=factor * (n_heads * d_kv) ** -0.5)
            if hasattr(module, "relative_attention_bias"):
                init.normal_(module.relative_attention_bias.weight, mean=0.0, std=factor * d_model**-0.5)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        # The Triton kernels carry the position bias at linear memory: prefer them wherever they can run.
        if requested_attention is None and fat5_kernels_available():
            return "fat5"
        if requested_attention is not None and requested_attention.startswith("flash_attention"):
            raise ValueError(
                f"attn_implementation={requested_attention!r} cannot carry FAT5's position bias "
                f"(position_encoding_type={self.config.position_encoding_type!r}); use 'fat5' (Triton kernels), "
                "'sdpa', 'flex_attention' or 'eager'."
            )
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def _shift_right(self, input_ids, segment_ids=None):
        decoder_start_token_id = self.config.decoder_start_token_id
        pad_token_id = self.config.pad_token_id
        if decoder_start_token_id is None:
            raise ValueError("`config.decoder_start_token_id` must be set to shift labels into decoder inputs.")
        if pad_token_id is None:
            raise ValueError("`config.pad_token_id` must be set to replace ignored labels (-100) in decoder inputs.")
        shifted_input_ids = input_ids.new_zeros(input_ids.shape)
        shifted_input_ids[..., 1:] = input_ids[..., :-1].clone()
        shifted_input_ids[..., 0] = decoder_start_token_id
        shifted_input_ids.masked_fill_(shifted_input_ids == -100, pad_token_id)
        if segment_ids is not None:
            # Packed rows: every example's targets start behind the start token, not behind the last example's.
            previous = nn.functional.pad(segment_ids[..., :-1], (1, 0), value=-1)
            shifted_input_ids.masked_fill_(segment_ids != previous, decoder_start_token_id)
        return shifted_input_ids


def fat5_kernels_available() -> bool:
    """Whether the `fat5` Triton attention can run here (a CUDA GPU and Triton)."""
    return (
        torch.cuda.is_available()
        and importlib.util.find_spec("triton") is not None
        and "fat5" in ALL_ATTENTION_FUNCTIONS.valid_keys()
    )


def fat5_attention_in_use(attention_interface: Callable) -> bool:
    """Whether the attention function is the `fat5` Triton attention, which takes the position bias's parameters (it
    says when, through `computes_position_bias`)."""
    return hasattr(attention_interface, "computes_position_bias")


class FlashT5Stack(FlashT5PreTrainedModel):
    """A stack of FAT5 blocks. Its token embedding is tied to the `shared` one of the model that owns it."""

    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.is_decoder = config.is_decoder
        self.block = nn.ModuleList(
            [FlashT5Block(config, has_position_bias=bool(i == 0), layer_idx=i) for i in range(config.num_layers)]
        )
        self.final_layer_norm = FlashT5LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.post_init()

    def set_input_embeddings(self, new_embeddings):
        self.embed_tokens = new_embeddings

    @merge_with_config_defaults
    @capture_outputs
    @auto_docstring
    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        inputs_embeds=None,
        cache=None,
        use_cache=None,
        segment_ids=None,
        encoder_segment_ids=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        cache (`EncoderDecoderCache`, *optional*):
            The decoder's self- and cross-attention keys and values of the tokens decoded so far, returned when
            `use_cache=True`: pass it back to run the decoder on the new tokens only.
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each token, 1, 2, ... along a row, padding 0
            last. Attention stays within an example; the segments stand for the attention mask.
        encoder_segment_ids (`torch.LongTensor` of shape `(batch_size, encoder_sequence_length)`, *optional*):
            The decoder's cross-attention in packed rows: the example of each encoder token, whose ids the decoder
            tokens of the same example share.
        """
        check_token_inputs(input_ids, attention_mask, inputs_embeds, name="decoder_" if self.is_decoder else "")
        if segment_ids is not None:
            check_packed_rows(self.config, segment_ids, input_ids if input_ids is not None else inputs_embeds)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and not self.is_decoder:
            raise ValueError(f"`use_cache` can only be set to `True` if {self.__class__.__name__} is a decoder.")
        if not self.is_decoder:
            cache = None
        elif use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))

        self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        past_seen_tokens = self_attention_cache.get_seq_length() if self_attention_cache is not None else 0
        # Packed rows: the segments mask padding too (a padding query sees padding keys only, never an empty row).
        self_segments = encoder_segments = None
        if segment_ids is not None:
            self_segments = same_segment_mask_function(segment_ids, segment_ids)
            attention_mask = None
        if segment_ids is not None and encoder_segment_ids is not None:
            encoder_segments = same_segment_mask_function(segment_ids, encoder_segment_ids)
            encoder_attention_mask = None
        if self.is_decoder:
            attention_mask = create_causal_mask(
                self.config, inputs_embeds, attention_mask, self_attention_cache, and_mask_function=self_segments
            )
        else:
            attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                and_mask_function=self_segments,
            )
        if self.is_decoder and encoder_hidden_states is not None:
            encoder_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                and_mask_function=encoder_segments,
            )

        position_embeddings = None
        encoder_position_embeddings = None
        # CODEPATH: FAT5 checkpoints with `position_encoding_type="RoPE"`; T5, ALiBi and FIRE ones add a bias instead.
        if self.config.position_encoding_type == "rope":
            positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_embeddings = rotary_cos_sin(self.config, positions)
            # CODEPATH: RoPE checkpoints of the reference implementation also rotate the cross-attention's keys and
            # values, at their own positions in the encoder.
            if self.config.rotary_value_and_cross_attention and encoder_hidden_states is not None:
                encoder_positions = torch.arange(encoder_hidden_states.shape[1], device=inputs_embeds.device)
                encoder_position_embeddings = rotary_cos_sin(self.config, encoder_positions)

        hidden_states = self.dropout(inputs_embeds)
        position_bias = None
        for layer_module in self.block:
            hidden_states, position_bias = layer_module(
                hidden_states,
                attention_mask,
                position_bias,  # positional, so that gradient checkpointing carries its gradient
                encoder_hidden_states,
                encoder_attention_mask,
                position_embeddings=position_embeddings,
                encoder_position_embeddings=encoder_position_embeddings,
                segment_ids=segment_ids,
                encoder_segment_ids=encoder_segment_ids,
                cache=cache,
                **kwargs,
            )

        hidden_states = self.dropout(self.final_layer_norm(hidden_states))
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, **{_CACHE_OUTPUT_FIELD: cache}
        )


def encoder_config_of(config: FlashT5Config) -> FlashT5Config:
    encoder_config = copy.deepcopy(config)
    encoder_config.is_decoder = False
    encoder_config.use_cache = False
    return encoder_config


def decoder_config_of(config: FlashT5Config) -> FlashT5Config:
    decoder_config = copy.deepcopy(config)
    decoder_config.is_decoder = True
    decoder_config.num_layers = config.num_decoder_layers
    return decoder_config


def as_encoder_output(encoder_outputs) -> ModelOutput:
    """Encoder outputs given as a tuple (`return_dict=False`) become a model output again."""
    if isinstance(encoder_outputs, ModelOutput):
        return encoder_outputs
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


def packed_span_loss(logits: torch.Tensor, positions: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """The mean over the examples of packed rows of the cross-entropy of each example's span position, its softmax
    taken over the example's own tokens. `positions` (rows, examples): in the row, -100 for no example."""
    positions = positions.to(logits.device)
    slots = torch.arange(1, positions.shape[1] + 1, device=logits.device)
    in_example = segment_ids.to(logits.device)[:, None, :] == slots[None, :, None]
    log_normaliser = torch.logsumexp(logits.float()[:, None, :].masked_fill(~in_example, float("-inf")), dim=-1)
    labelled = positions.ne(-100)
    target = logits.float().gather(1, positions.clamp(min=0))
    losses = torch.where(labelled, log_normaliser - target, 0.0)
    return losses.sum() / labelled.sum().clamp(min=1)


def share_of_batch_loss(loss: torch.Tensor, labels: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """`loss`, a mean over this batch's labelled items (labels other than -100), as its share of a mean over
    `num_items_in_batch` items. Trainer passes that count taken over every device and gradient-accumulation step, so
    the gradients it sums are those of one mean over the global batch, as on a single device."""
    if num_items_in_batch is None:
        return loss
    return loss * labels.ne(-100).sum().to(loss.device) / num_items_in_batch


@auto_docstring
class FlashT5Model(FlashT5PreTrainedModel):
    _shared_embedding_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }
    _tied_weights_keys = _shared_embedding_keys
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = FlashT5Stack(encoder_config_of(config))
        self.decoder = FlashT5Stack(decoder_config_of(config))
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        for stack in (self.encoder, self.decoder):
            stack.set_input_embeddings(new_embeddings)

    @can_return_tuple
    @auto_docstring
    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[tuple[torch.Tensor]] | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        segment_ids: torch.LongTensor | None = None,
        decoder_segment_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        r"""
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            Indices of decoder input sequence tokens in the vocabulary. FAT5 starts decoding with
            `config.decoder_start_token_id`; with a `cache`, only the tokens not yet in it need to be given.
        decoder_attention_mask (`torch.Tensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            Mask of the decoder inputs that are padding, on top of the causal mask.
        cache (`EncoderDecoderCache`, *optional*):
            The decoder's self- and cross-attention keys and values of the tokens decoded so far, returned when
            `use_cache=True`: pass it back to run the decoder on the new tokens only.
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each input token, 1, 2, ... along a row,
            padding 0 last. Each example attends only to itself; the segments stand for `attention_mask`.
        decoder_segment_ids (`torch.LongTensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            The example of each target token in packed rows, with the ids of `segment_ids`: each example's targets
            attend (causally) to themselves and to their own inputs.
        """
        check_decoder_segments(segment_ids, decoder_segment_ids)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                segment_ids=segment_ids,
                **kwargs,
            )
        encoder_outputs = as_encoder_output(encoder_outputs)

        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            inputs_embeds=decoder_inputs_embeds,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            segment_ids=decoder_segment_ids,
            encoder_segment_ids=segment_ids,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{_CACHE_OUTPUT_FIELD: getattr(decoder_outputs, _CACHE_OUTPUT_FIELD)},
        )


@auto_docstring(
    custom_intro="""
    FAT5 with a language-modeling head: the encoder-decoder for span corruption, translation, summarisation and
    every text-to-text task, with `generate`.
    """
)
class FlashT5ForConditionalGeneration(FlashT5PreTrainedModel, GenerationMixin):
    _shared_embedding_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }
    _tied_weights_keys = {**_shared_embedding_keys, "lm_head.weight": "shared.weight"}

    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = FlashT5Stack(encoder_config_of(config))
        self.decoder = FlashT5Stack(decoder_config_of(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        for stack in (self.encoder, self.decoder):
            stack.set_input_embeddings(new_embeddings)

    def logits_and_loss(self, sequence_output: torch.Tensor, labels: torch.Tensor | None):
        """The LM head's logits and, given labels, their loss (`lm_loss`)."""
        lm_logits = self.lm_head(sequence_output)
        return lm_logits, self.lm_loss(lm_logits, labels) if labels is not None else None

    def lm_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in fp32 over the labelled tokens (-100 is ignored), with label smoothing and z-loss."""
        logits = logits.float().view(-1, logits.size(-1))
        labels = labels.to(logits.device).view(-1)
        loss = nn.functional.cross_entropy(
            logits, labels, ignore_index=-100, label_smoothing=self.config.label_smoothing
        )
        # CODEPATH: FAT5 pretraining configs set a z-loss (1e-4); T5-converted checkpoints do not.
        if self.config.z_loss:
            labelled = (labels != -100).float()
            log_z = torch.logsumexp(logits, dim=-1)
            loss = loss + self.config.z_loss * (log_z.square() * labelled).sum() / labelled.sum().clamp(min=1.0)
        return loss

    @can_return_tuple
    @auto_docstring
    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[tuple[torch.Tensor]] | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        segment_ids: torch.LongTensor | None = None,
        decoder_segment_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            Indices of decoder input sequence tokens in the vocabulary. When `labels` are given and these are not,
            they are the labels shifted right behind `config.decoder_start_token_id`.
        decoder_attention_mask (`torch.Tensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            Mask of the decoder inputs that are padding, on top of the causal mask.
        labels (`torch.LongTensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            Target token ids for the language-modeling loss; -100 marks tokens the loss ignores. The loss adds
            `config.z_loss` and `config.label_smoothing`.
        cache (`EncoderDecoderCache`, *optional*):
            The decoder's self- and cross-attention keys and values of the tokens decoded so far, returned when
            `use_cache=True`: pass it back to run the decoder on the new tokens only.
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each input token, 1, 2, ... along a row,
            padding 0 last. Each example attends only to itself; the segments stand for `attention_mask`.
        decoder_segment_ids (`torch.LongTensor` of shape `(batch_size, target_sequence_length)`, *optional*):
            The example of each target token in packed rows, with the ids of `segment_ids`: each example's targets
            attend (causally) to themselves and to their own inputs, and are shifted right within the example.

        Example:

        ```python
        >>> import torch
        >>> import fat5
        >>> from fat5 import FlashT5Config, FlashT5ForConditionalGeneration

        >>> config = FlashT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        >>> model = FlashT5ForConditionalGeneration(config)
        >>> input_ids = torch.tensor([[5, 6, 7, 1]])
        >>> loss = model(input_ids=input_ids, labels=torch.tensor([[8, 9, 1]])).loss
        >>> generated = model.generate(input_ids, max_new_tokens=4, do_sample=False)
        >>> generated.shape[0]
        1
        ```"""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        check_decoder_segments(segment_ids, decoder_segment_ids)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                segment_ids=segment_ids,
                **kwargs,
            )
        encoder_outputs = as_encoder_output(encoder_outputs)

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels, decoder_segment_ids)
        if labels is not None and self.training:
            # A training step decodes every target at once: a cache would only hold on to keys and values.
            use_cache = False
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            inputs_embeds=decoder_inputs_embeds,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            segment_ids=decoder_segment_ids,
            encoder_segment_ids=segment_ids,
            **kwargs,
        )

        sequence_output = decoder_outputs.last_hidden_state
        # CODEPATH: T5 v1.0 checkpoints share the input embedding with the output projection and rescale before it;
        # T5 v1.1, FLAN-T5, mT5 and FAT5 ones have their own head.
        if self.config.scale_decoder_outputs:
            sequence_output = sequence_output * (self.config.hidden_size**-0.5)
        lm_logits, loss = self.logits_and_loss(sequence_output, labels)
        if loss is not None:
            loss = share_of_batch_loss(loss, labels, num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=lm_logits,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{_CACHE_OUTPUT_FIELD: getattr(decoder_outputs, _CACHE_OUTPUT_FIELD)},
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor):
        return self._shift_right(labels)

    def adjust_generation_fn(self, *args, **kwargs):
        super().adjust_generation_fn(*args, **kwargs)
        # Checkpoints of the reference implementation ship a generation config whose pad token is the loss's ignore
        # index (-100): generation (and saving, on some transformers versions) needs the real one.
        if self.generation_config.pad_token_id == -100:
            self.generation_config.pad_token_id = self.config.pad_token_id


@auto_docstring
class FlashT5EncoderModel(FlashT5PreTrainedModel):
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\."]
    _shared_embedding_keys = {"encoder.embed_tokens.weight": "shared.weight"}
    _tied_weights_keys = _shared_embedding_keys

    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = FlashT5Stack(encoder_config_of(config))
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)

    def encode(self, input_ids, attention_mask, inputs_embeds, segment_ids=None, **kwargs) -> BaseModelOutput:
        """The encoder's outputs, shared by the encoder-only heads."""
        return self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            segment_ids=segment_ids,
            **kwargs,
        )

    @can_return_tuple
    @auto_docstring(checkpoint="CATIE-AQ/FAT5-small")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        r"""
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each token, 1, 2, ... along a row, padding 0
            last. Each example attends only to itself; the segments stand for `attention_mask`.
        """
        return self.encode(input_ids, attention_mask, inputs_embeds, segment_ids, **kwargs)


@auto_docstring(
    custom_intro="""
    FAT5 encoder with a sequence classification or regression head on the hidden state of each sequence's last
    end-of-sequence token (given `inputs_embeds` only, its last token that is not padding). Unlike
    `T5ForSequenceClassification`, which runs the decoder too, it has no decoder: half the parameters, and
    checkpoints of either layout load into it (a decoder's weights are ignored).
    """
)
class FlashT5ForSequenceClassification(FlashT5EncoderModel):
    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.classification_head = FlashT5ClassificationHead(config)
        self.post_init()

    @can_return_tuple
    @auto_docstring(checkpoint="CATIE-AQ/FAT5-small")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Labels for computing the sequence classification/regression loss. Indices should be in `[0, ...,
            config.num_labels - 1]`. If `config.num_labels == 1` a regression loss is computed (Mean-Square loss), If
            `config.num_labels > 1` a classification loss is computed (Cross-Entropy). With `segment_ids`, one label
            per example of each row, `(batch_size, examples_per_row)`, -100 (NaN for regression) where a row has
            fewer examples; the logits are then `(batch_size, examples_per_row, num_labels)`.
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each token, 1, 2, ... along a row, padding 0
            last. Each example attends only to itself; the segments stand for `attention_mask`.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.encode(input_ids, attention_mask, inputs_embeds, segment_ids, **kwargs)
        sequence_output = outputs.last_hidden_state

        if segment_ids is not None:
            return self._packed_forward(input_ids, sequence_output, segment_ids, labels, num_items_in_batch, outputs)
        if input_ids is not None:
            pooled_mask = input_ids.eq(self.config.eos_token_id).to(sequence_output.device)
            if not pooled_mask.any(dim=1).all():
                raise ValueError(
                    f"Every sequence must contain the end-of-sequence token (id {self.config.eos_token_id}): its "
                    "hidden state is the sequence's representation. Tokenize with the eos appended."
                )
        elif attention_mask is not None:
            # Without token ids the eos cannot be seen: the last token that is not padding stands for it.
            pooled_mask = attention_mask.bool().to(sequence_output.device)
        else:
            pooled_mask = torch.ones(sequence_output.shape[:2], dtype=torch.bool, device=sequence_output.device)
        positions = torch.arange(pooled_mask.shape[1], device=pooled_mask.device)
        pooled_position = (pooled_mask * positions).argmax(dim=1)
        pooled = sequence_output[
            torch.arange(sequence_output.shape[0], device=sequence_output.device), pooled_position
        ]
        logits = self.classification_head(pooled)

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type is None:
                if self.config.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                loss = MSELoss()(logits.view(-1), labels.view(-1).to(logits.dtype))
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.config.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels.to(logits.dtype))
            loss = share_of_batch_loss(loss, labels, num_items_in_batch)

        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _packed_forward(self, input_ids, sequence_output, segment_ids, labels, num_items_in_batch, outputs):
        """One logit vector per example of packed rows, from its last eos token (its last token without ids)."""
        examples = labels.shape[1] if labels is not None else int(segment_ids.max())
        slots = torch.arange(1, examples + 1, device=segment_ids.device)
        in_example = segment_ids[:, None, :] == slots[None, :, None]
        if input_ids is not None:
            in_example = in_example & input_ids.eq(self.config.eos_token_id)[:, None, :]
        positions = torch.arange(segment_ids.shape[1], device=segment_ids.device)
        pooled_position = torch.where(in_example, positions, -1).amax(-1)
        if labels is not None and not torch.compiler.is_compiling():
            labelled = labels.isfinite() & labels.ne(-100) if labels.is_floating_point() else labels.ne(-100)
            if bool((labelled & pooled_position.lt(0)).any()):
                raise ValueError(
                    f"Every labelled example must contain the end-of-sequence token (id {self.config.eos_token_id}):"
                    " its hidden state is the example's representation. Tokenize with the eos appended."
                )
        index = pooled_position.clamp(min=0)[..., None].expand(-1, -1, sequence_output.shape[-1])
        logits = self.classification_head(sequence_output.gather(1, index.to(sequence_output.device)))

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.num_labels == 1:
                labelled = labels.isfinite()
                squared = (logits.squeeze(-1) - labels.nan_to_num()).square() * labelled
                loss = squared.sum() / labelled.sum().clamp(min=1)
            elif labels.is_floating_point():
                raise ValueError("Packed rows take single-label classification or regression labels.")
            else:
                loss = CrossEntropyLoss()(logits.reshape(-1, self.config.num_labels), labels.reshape(-1))
            loss = share_of_batch_loss(
                loss, labels.nan_to_num(-100.0) if labels.is_floating_point() else labels, num_items_in_batch
            )
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@auto_docstring(
    custom_intro="""
    FAT5 encoder with a token classification head (a linear layer on each hidden state), e.g. for named-entity
    recognition.
    """
)
class FlashT5ForTokenClassification(FlashT5EncoderModel):
    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    @auto_docstring(checkpoint="CATIE-AQ/FAT5-small")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Labels for computing the token classification loss. Indices should be in `[0, ..., config.num_labels - 1]`;
            -100 marks tokens the loss ignores.
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each token, 1, 2, ... along a row, padding 0
            last. Each example attends only to itself; the segments stand for `attention_mask`.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.encode(input_ids, attention_mask, inputs_embeds, segment_ids, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.num_labels), labels.to(logits.device).reshape(-1))
            loss = share_of_batch_loss(loss, labels, num_items_in_batch)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@auto_docstring(
    custom_intro="""
    FAT5 encoder with a span classification head for extractive question answering (a linear layer on the hidden
    states computing span start and end logits). Unlike `T5ForQuestionAnswering`, which runs the decoder too, it has
    no decoder: half the parameters, and checkpoints of either layout load into it (a decoder's weights are ignored).
    """
)
class FlashT5ForQuestionAnswering(FlashT5EncoderModel):
    def __init__(self, config: FlashT5Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    @auto_docstring(checkpoint="CATIE-AQ/FAT5-small")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> QuestionAnsweringModelOutput:
        r"""
        start_positions (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Position (index) of the start of the labelled span, for the loss. With `segment_ids`, one position in
            the row per example, `(batch_size, examples_per_row)`, -100 where a row has fewer examples.
        end_positions (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Position (index) of the end of the labelled span, as `start_positions`.
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed rows (several examples a row): the example of each token, 1, 2, ... along a row, padding 0
            last. Each example attends only to itself; the segments stand for `attention_mask`.
        """
        outputs = self.encode(input_ids, attention_mask, inputs_embeds, segment_ids, **kwargs)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))

        total_loss = None
        if start_positions is not None and end_positions is not None and segment_ids is not None:
            total_loss = (
                packed_span_loss(start_logits, start_positions, segment_ids)
                + packed_span_loss(end_logits, end_positions, segment_ids)
            ) / 2
        elif start_positions is not None and end_positions is not None:
            # Positions outside the sequence are clamped to an ignored index, as transformers' QA heads do.
            ignored_index = start_logits.size(1)
            start_positions = start_positions.view(-1).to(start_logits.device).clamp(0, ignored_index)
            end_positions = end_positions.view(-1).to(end_logits.device).clamp(0, ignored_index)
            loss_fct = CrossEntropyLoss(ignore_index=ignored_index)
            total_loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2

        return QuestionAnsweringModelOutput(
            loss=total_loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "FlashT5EncoderModel",
    "FlashT5ForConditionalGeneration",
    "FlashT5ForQuestionAnswering",
    "FlashT5ForSequenceClassification",
    "FlashT5ForTokenClassification",
    "FlashT5Model",
    "FlashT5PreTrainedModel",
]
