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
"""Loading configs written by the reference FAT5 implementation (and T5-family configs) natively.

The reference implementation (github.com/catie-aq/flashT5, used by the CATIE-AQ FAT5 hub repos) stores its own config
keys (`use_glu_mlp`, `use_gelu_act`, `attention_type`, `attention_scale`, `z_loss`, ..., plus an `auto_map` to remote
code). [`legacy_config_to_native`] maps such a config dict, and T5 / mT5 ones, to `FlashT5Config`'s fields (called by
`FlashT5Config.from_dict`). The reference's state-dict names are renamed at load time through transformers'
checkpoint conversion mapping (`conversion_mapping.py`).
"""

import math

from transformers.utils import logging


logger = logging.get_logger(__name__)

# Keys of the reference's config that only choose kernels or training tricks: dropped.
_DROPPED_LEGACY_KEYS = (
    "attention_type",
    "use_flash_attention",
    "use_triton_layernorm",
    "use_triton_crossentropy",
    "crossentropy_inplace_backward",
    "use_triton_gated_mlp",
    "use_full_bias_size",
    "use_masking",
    "max_sequence_length",
    "use_randomized_position_encoding",
)
# Keys whose presence tells a config written by the reference implementation.
_LEGACY_MARKERS = (
    "use_glu_mlp",
    "use_gelu_act",
    "attention_type",
    "use_flash_attention",
    "use_triton_layernorm",
    "use_triton_crossentropy",
    "use_full_bias_size",
    "use_masking",
    "max_sequence_length",
    "rotary_emb_fraction",
    "fire_mlp_width",
)
_POSITION_ENCODING_TYPES = {"t5": "t5", "alibi": "alibi", "rope": "rope", "fire": "fire"}
_ALIBI_MODES = {
    "symetric": "symmetric",
    "symmetric": "symmetric",
    "asymetric": "asymmetric",
    "asymmetric": "asymmetric",
}
# Attributes that T5-family configs save but that are derived (properties) or meaningless in FlashT5Config.
_T5_DERIVED_KEYS = ("dense_act_fn", "is_gated_act", "n_positions", "output_past")


def is_legacy_config(config_dict: dict) -> bool:
    """Whether `config_dict` was written by the reference FAT5 implementation."""
    return any(key in config_dict for key in _LEGACY_MARKERS)


def legacy_config_to_native(config_dict: dict) -> dict:
    """
    Returns a copy of `config_dict` that `FlashT5Config` accepts, mapping what checkpoints of other origins store:

    - reference FAT5 configs (CATIE-AQ hub repos): legacy keys are translated or dropped, see `REFERENCE_FORMAT.md`;
    - T5 / mT5 configs (`model_type` `t5` or `mt5`, for `from_pretrained(t5_folder)`): derived keys are dropped;
    - any config: a stale `auto_map` (remote code) is dropped.

    Native configs pass through unchanged (apart from `auto_map`). UMT5 and other model types raise a `ValueError`.
    """
    config = dict(config_dict)
    config.pop("auto_map", None)
    model_type = config.get("model_type")
    if model_type == "umt5":
        raise ValueError(
            "UMT5 checkpoints cannot be loaded as FAT5: UMT5 learns a relative position bias in every layer, FAT5 (like "
            "T5) shares the one of the first layer."
        )
    if model_type not in (None, "flash_t5", "t5", "mt5"):
        raise ValueError(f"A `{model_type}` config cannot be loaded as FAT5 (`flash_t5`); only T5-family configs can.")
    if model_type in ("t5", "mt5"):
        for key in _T5_DERIVED_KEYS:
            config.pop(key, None)
        # mT5 never rescales its decoder output (MT5ForConditionalGeneration), whatever `tie_word_embeddings` says:
        # 5.x writes `true` for every mT5 it saves. T5 rescales when tied, the config's default.
        if model_type == "mt5":
            config["scale_decoder_outputs"] = False
        config["model_type"] = "flash_t5"
        return config

    if not is_legacy_config(config):
        return config

    num_heads = config.get("num_heads", 8)
    for key in _T5_DERIVED_KEYS:
        config.pop(key, None)

    # MLP: the reference ignores `feed_forward_proj` and reads use_glu_mlp (default False) and use_gelu_act (default
    # True). Its GELU is torch's tanh approximation, which is exactly transformers' "gelu_pytorch_tanh".
    gated = config.pop("use_glu_mlp", False)
    activation = "gelu_pytorch_tanh" if config.pop("use_gelu_act", True) else "relu"
    config["feed_forward_proj"] = f"gated-{activation}" if gated else activation

    # Attention scale: None meant 1 / sqrt(num_heads) in the reference (the head count, not the head size).
    attention_scale = config.pop("attention_scale", None)
    config["attention_scale"] = float(attention_scale) if attention_scale is not None else 1.0 / math.sqrt(num_heads)

    position_encoding_type = str(config.get("position_encoding_type", "t5"))
    if position_encoding_type.lower() not in _POSITION_ENCODING_TYPES:
        raise ValueError(f"Unknown `position_encoding_type` {position_encoding_type!r} in a reference FAT5 config.")
    config["position_encoding_type"] = _POSITION_ENCODING_TYPES[position_encoding_type.lower()]

    alibi_mode = config.get("alibi_mode", "symetric")
    if alibi_mode not in _ALIBI_MODES:
        raise ValueError(f"Unknown `alibi_mode` {alibi_mode!r} in a reference FAT5 config.")
    config["alibi_mode"] = _ALIBI_MODES[alibi_mode]
    # The reference's asymmetric ALiBi also applies in the decoder, and its RoPE rotates values and cross-attention.
    if config["position_encoding_type"] == "alibi" and config["alibi_mode"] == "asymmetric":
        config["alibi_asymmetric_decoder"] = True
    if config["position_encoding_type"] == "rope":
        config["rotary_value_and_cross_attention"] = True

    if "rotary_emb_fraction" in config:
        config["rotary_fraction"] = config.pop("rotary_emb_fraction")
    if config.pop("rotary_scale_base", None) is not None:
        raise ValueError(
            "Reference FAT5 checkpoints with xPos rotary scaling (`rotary_scale_base`) are not supported."
        )
    if "fire_mlp_width" in config:
        config["fire_hidden_size"] = config.pop("fire_mlp_width")

    # The reference drops attention probabilities at its own rate, 0 by default (not at `dropout_rate`).
    if config.get("attention_dropout_rate") is None:
        config["attention_dropout_rate"] = 0.0
    if config.get("z_loss") is None:
        config["z_loss"] = 0.0
    if config.get("label_smoothing") is None:
        config["label_smoothing"] = 0.0

    # The reference's default pad_token_id is -100, which is not a token: use the T5 convention (pad = start = 0).
    if config.get("pad_token_id", -100) == -100:
        start = config.get("decoder_start_token_id", 0)
        config["pad_token_id"] = start if start is not None and start >= 0 else 0

    if config.get("use_randomized_position_encoding"):
        logger.warning(
            "This reference FAT5 checkpoint was trained with randomized position encodings, which the reference also "
            "draws at inference time; FAT5 uses the ordinary positions."
        )
    for key in _DROPPED_LEGACY_KEYS:
        config.pop(key, None)

    # The reference's seq2seq model writes `is_encoder_decoder: false` and needs untied, unscaled output embeddings.
    config.pop("is_encoder_decoder", None)
    config["tie_word_embeddings"] = False
    config["scale_decoder_outputs"] = False
    return config


__all__ = ["is_legacy_config", "legacy_config_to_native"]
