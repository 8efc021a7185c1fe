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
"""FAT5 (Flash Attention T5) model configuration."""

import copy

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import auto_docstring

from .checkpoint_conversion import legacy_config_to_native


POSITION_ENCODING_TYPES = ("t5", "alibi", "rope", "fire")
ALIBI_MODES = ("symmetric", "asymmetric")


@auto_docstring(checkpoint="CATIE-AQ/FAT5-small")
@strict
class FlashT5Config(PreTrainedConfig):
    r"""
    relative_attention_num_buckets (`int`, *optional*, defaults to 32):
        The number of buckets of the T5 relative position bias (`position_encoding_type="t5"`).
    relative_attention_max_distance (`int`, *optional*, defaults to 128):
        The distance from which all relative positions share the last bucket of the T5 relative position bias.
    feed_forward_proj (`str`, *optional*, defaults to `"relu"`):
        The feed-forward layer: an activation name (`"relu"`, T5 v1.0) or `"gated-"` followed by one
        (`"gated-gelu"`, T5 v1.1, FLAN-T5, mT5 and FAT5).
    position_encoding_type (`str`, *optional*, defaults to `"t5"`):
        How attention knows about positions: `"t5"` (bucketed relative position bias, learned), `"alibi"` (linear
        biases with fixed slopes), `"rope"` (rotary embeddings of queries and keys) or `"fire"` (a learned function
        of the relative distance).
    attention_dropout_rate (`float`, *optional*):
        The dropout ratio of the attention probabilities, in training. `None` (the default) uses `dropout_rate`, as
        T5 does.
    alibi_mode (`str`, *optional*, defaults to `"symmetric"`):
        With ALiBi, `"symmetric"` penalises distance alike on both sides of the query; `"asymmetric"` gives keys
        before and after the query their own slopes (encoder only, unless `alibi_asymmetric_decoder`: the decoder is
        causal).
    alibi_asymmetric_decoder (`bool`, *optional*, defaults to `False`):
        With asymmetric ALiBi, whether the decoder's causal self-attention is asymmetric too: its second half of
        the heads, which look only forwards, then see only their own position. Set for checkpoints of the reference
        FAT5 implementation, which does so.
    rotary_fraction (`float`, *optional*, defaults to 1.0):
        With RoPE, the fraction of each head's dimensions that is rotated.
    rotary_base (`float`, *optional*, defaults to 10000.0):
        With RoPE, the base of the rotation frequencies.
    rotary_interleaved (`bool`, *optional*, defaults to `False`):
        With RoPE, whether rotated pairs are adjacent dimensions (GPT-J style) rather than the two halves of the
        rotated dimensions (GPT-NeoX style).
    rotary_value_and_cross_attention (`bool`, *optional*, defaults to `False`):
        With RoPE, whether values are rotated as well as queries and keys, and the decoder's cross-attention too
        (queries at their decoder positions, keys and values at their encoder positions). Set for checkpoints of the
        reference FAT5 implementation, which does so.
    fire_hidden_size (`int`, *optional*, defaults to 32):
        With FIRE, the width of the MLP that maps a relative distance to one bias per head.
    attention_scale (`float`, *optional*, defaults to 1.0):
        The factor of the query-key products. T5 folds it into its weights and uses 1.0.
    z_loss (`float`, *optional*, defaults to 0.0):
        Weight of the z-loss, `z_loss * logsumexp(logits) ** 2` averaged over the labelled tokens, added to the
        language-modeling loss to keep the softmax normaliser near 1.
    label_smoothing (`float`, *optional*, defaults to 0.0):
        Label smoothing of the language-modeling loss.
    scale_decoder_outputs (`bool`, *optional*):
        Whether the decoder output is multiplied by `d_model ** -0.5` before the language-modeling head, as T5 v1.0
        does with its tied embeddings. Defaults to `tie_word_embeddings`.
    classifier_dropout (`float`, *optional*, defaults to 0.0):
        The dropout ratio of the classification heads.

    Example:

    ```python
    >>> import fat5
    >>> from fat5 import FlashT5Config, FlashT5Model

    >>> configuration = FlashT5Config()
    >>> model = FlashT5Model(configuration)
    >>> configuration = model.config
    ```"""

    model_type = "flash_t5"
    keys_to_ignore_at_inference = ["cache"]
    # T5's names, read and written by T5 checkpoints and code, for transformers' canonical ones.
    attribute_map = {
        "d_model": "hidden_size",
        "d_ff": "intermediate_size",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "head_dim": "d_kv",
    }

    vocab_size: int = 32128
    hidden_size: int = 512
    d_kv: int = 64
    intermediate_size: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float | int = 0.1
    attention_dropout_rate: float | int | None = None
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    position_encoding_type: str = "t5"
    alibi_mode: str = "symmetric"
    alibi_asymmetric_decoder: bool = False
    rotary_fraction: float | int = 1.0
    rotary_base: float | int = 10000.0
    rotary_interleaved: bool = False
    rotary_value_and_cross_attention: bool = False
    fire_hidden_size: int = 32
    attention_scale: float | int = 1.0
    z_loss: float | int = 0.0
    label_smoothing: float | int = 0.0
    classifier_dropout: float | int = 0.0
    is_encoder_decoder: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    decoder_start_token_id: int | None = 0
    is_decoder: bool = False

    def __post_init__(self, **kwargs):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # Configs written by the reference implementation (and by T5) carry legacy keys: map them, never write them.
        return super().from_dict(legacy_config_to_native(config_dict), **kwargs)

    def get_text_config(self, decoder=None, encoder=None):
        text_config = super().get_text_config(decoder=decoder, encoder=encoder)
        if decoder and not encoder and text_config.num_layers != self.num_decoder_layers:
            # Caches size themselves from the decoder's text config: give them the decoder's depth.
            text_config = copy.deepcopy(text_config) if text_config is self else text_config
            text_config.num_layers = self.num_decoder_layers
        return text_config

    @property
    def dense_act_fn(self) -> str:
        activation = self.feed_forward_proj.split("-")[-1]
        # "gated-gelu" names T5 v1.1's tanh approximation of GELU, as in upstream T5.
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else activation

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    def validate_architecture(self):
        """Part of `@strict`-powered validation: impossible combinations raise a `ValueError` naming the field."""
        # The message gives T5's name too (`d_model` for `hidden_size`, ...): checkpoints and users write those.
        aliases = {field: alias for alias, field in self.attribute_map.items()}
        sizes = (
            "vocab_size",
            "hidden_size",
            "d_kv",
            "intermediate_size",
            "num_heads",
            "num_layers",
            "num_decoder_layers",
        )
        for name in sizes:
            size = getattr(self, name)
            if size < 1:
                alias = f" (`{aliases[name]}`)" if name in aliases else ""
                raise ValueError(f"`{name}`{alias}={size} must be positive.")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"`feed_forward_proj`={self.feed_forward_proj!r} is not an activation name or `gated-` followed by "
                "one, e.g. 'relu' or 'gated-gelu'."
            )
        if self.dense_act_fn not in ACT2FN:
            raise ValueError(
                f"`feed_forward_proj`={self.feed_forward_proj!r} names the activation {parts[-1]!r}, which is not one "
                "of transformers' (`transformers.activations.ACT2FN`), e.g. 'relu', 'gelu', 'gelu_new' or 'silu'."
            )
        for name, rate in (
            ("dropout_rate", self.dropout_rate),
            ("attention_dropout_rate", self.attention_dropout_rate),
            ("classifier_dropout", self.classifier_dropout),
        ):
            if rate is not None and not 0 <= rate < 1:
                raise ValueError(f"`{name}`={rate} must lie in [0, 1).")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"`layer_norm_epsilon`={self.layer_norm_epsilon} must be positive.")
        if self.position_encoding_type not in POSITION_ENCODING_TYPES:
            raise ValueError(
                f"`position_encoding_type`={self.position_encoding_type!r} is not one of {POSITION_ENCODING_TYPES}."
            )
        if self.alibi_mode not in ALIBI_MODES:
            raise ValueError(f"`alibi_mode`={self.alibi_mode!r} is not one of {ALIBI_MODES}.")
        if self.alibi_asymmetric_decoder and (self.position_encoding_type, self.alibi_mode) != ("alibi", "asymmetric"):
            raise ValueError(
                "`alibi_asymmetric_decoder`=True makes asymmetric ALiBi apply in the decoder too: it needs "
                f"`position_encoding_type`='alibi' and `alibi_mode`='asymmetric', got {self.position_encoding_type!r} "
                f"and {self.alibi_mode!r}."
            )
        if self.rotary_value_and_cross_attention and self.position_encoding_type != "rope":
            raise ValueError(
                "`rotary_value_and_cross_attention`=True extends rotary embeddings: it needs "
                f"`position_encoding_type`='rope', got {self.position_encoding_type!r}."
            )
        if self.position_encoding_type == "t5":
            if self.relative_attention_num_buckets < 4:
                raise ValueError(
                    f"`relative_attention_num_buckets`={self.relative_attention_num_buckets} must be at least 4: "
                    "half of them hold exact distances and half logarithmic ones, on each side of the query."
                )
            if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
                raise ValueError(
                    f"`relative_attention_max_distance`={self.relative_attention_max_distance} must exceed half of "
                    f"`relative_attention_num_buckets`={self.relative_attention_num_buckets}, where the logarithmic "
                    "buckets start."
                )
        if self.position_encoding_type == "rope":
            rotary_dim = int(self.d_kv * self.rotary_fraction)
            if not 0 < self.rotary_fraction <= 1 or rotary_dim < 2 or rotary_dim % 2:
                raise ValueError(
                    f"`rotary_fraction`={self.rotary_fraction} with `d_kv`={self.d_kv} must select an even, non-zero "
                    "number of dimensions of each head."
                )
        if self.position_encoding_type == "fire" and self.fire_hidden_size < 1:
            raise ValueError(f"`fire_hidden_size`={self.fire_hidden_size} must be positive.")
        if self.attention_scale <= 0:
            raise ValueError(f"`attention_scale`={self.attention_scale} must be positive.")
        if self.z_loss < 0:
            raise ValueError(f"`z_loss`={self.z_loss} must not be negative.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"`label_smoothing`={self.label_smoothing} must lie in [0, 1).")


__all__ = ["FlashT5Config"]
