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
"""Convert T5-family checkpoints (T5 v1.0, T5 v1.1, FLAN-T5, mT5) to FAT5.

    python -m fat5.models.flash_t5.convert_t5_to_flash_t5 SRC DST

SRC is a folder or hub id of a `T5ForConditionalGeneration` / `MT5ForConditionalGeneration` (converted to
`FlashT5ForConditionalGeneration`) or of a `T5EncoderModel` / `MT5EncoderModel` (converted to `FlashT5EncoderModel`).
The weights keep their names (FAT5 uses T5's layout); the config is translated: T5 v1.0 (ReLU, tied embeddings, decoder
output scaled by `d_model ** -0.5`) and T5 v1.1 / FLAN-T5 / mT5 (gated GELU, untied head, no scaling) both give the
same logits as transformers' T5. Tokenizer files found in SRC are copied to DST.
"""

import argparse
import copy
import os
import shutil

import torch
from transformers import AutoConfig, PreTrainedModel

from .configuration_flash_t5 import FlashT5Config
from .modeling_flash_t5 import FlashT5EncoderModel, FlashT5ForConditionalGeneration


_T5_MODEL_TYPES = ("t5", "mt5")
_TOKENIZER_FILES = (
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# T5 checkpoints may carry this unused table (a relative bias of the first cross-attention layer).
_UNUSED_T5_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _check_model_type(model_type: str | None):
    if model_type == "umt5":
        raise ValueError(
            "UMT5 cannot be converted to FAT5: UMT5 learns a relative position bias in every layer, while FAT5 (like T5) "
            "shares the bias of the first layer across the stack."
        )
    if model_type not in _T5_MODEL_TYPES:
        raise ValueError(
            f"Only T5-family checkpoints (model_type 't5' or 'mt5') can be converted to FAT5, got {model_type!r}."
        )


def flash_t5_config_from_t5(t5_config, tied_lm_head: bool = True) -> FlashT5Config:
    """The `FlashT5Config` that computes what `t5_config` does. `tied_lm_head`: whether the LM head is the input
    embedding (T5 v1.0) rather than a separate matrix (T5 v1.1, FLAN-T5, mT5)."""
    _check_model_type(t5_config.model_type)
    # transformers 5.x T5 configs carry `scale_decoder_outputs`; 4.x ones derive it from `tie_word_embeddings`.
    scale = getattr(t5_config, "scale_decoder_outputs", None)
    if scale is None:
        scale = bool(getattr(t5_config, "tie_word_embeddings", True))
    return FlashT5Config(
        vocab_size=t5_config.vocab_size,
        d_model=t5_config.d_model,
        d_kv=t5_config.d_kv,
        d_ff=t5_config.d_ff,
        num_layers=t5_config.num_layers,
        num_decoder_layers=t5_config.num_decoder_layers,
        num_heads=t5_config.num_heads,
        relative_attention_num_buckets=t5_config.relative_attention_num_buckets,
        relative_attention_max_distance=t5_config.relative_attention_max_distance,
        dropout_rate=t5_config.dropout_rate,
        layer_norm_epsilon=t5_config.layer_norm_epsilon,
        initializer_factor=t5_config.initializer_factor,
        feed_forward_proj=t5_config.feed_forward_proj,
        classifier_dropout=getattr(t5_config, "classifier_dropout", 0.0),
        position_encoding_type="t5",
        attention_scale=1.0,
        tie_word_embeddings=tied_lm_head,
        scale_decoder_outputs=bool(scale),
        pad_token_id=t5_config.pad_token_id,
        eos_token_id=t5_config.eos_token_id,
        decoder_start_token_id=getattr(t5_config, "decoder_start_token_id", None) or 0,
        use_cache=getattr(t5_config, "use_cache", True),
    )


def convert_t5_model(t5_model: PreTrainedModel) -> PreTrainedModel:
    """Converts an in-memory T5-family model to the equivalent FAT5 model (fp32 copy of its weights)."""
    model_type = getattr(t5_model.config, "model_type", None)
    _check_model_type(model_type)
    class_name = type(t5_model).__name__
    if class_name in ("T5EncoderModel", "MT5EncoderModel"):
        target_class = FlashT5EncoderModel
    elif class_name in ("T5ForConditionalGeneration", "MT5ForConditionalGeneration"):
        target_class = FlashT5ForConditionalGeneration
    else:
        raise ValueError(f"Cannot convert a {class_name}: use a (M)T5ForConditionalGeneration or a (M)T5EncoderModel.")

    state_dict = t5_model.state_dict()
    tied = True
    if "lm_head.weight" in state_dict:
        lm_head, shared = state_dict["lm_head.weight"], state_dict["shared.weight"]
        tied = lm_head.data_ptr() == shared.data_ptr() or torch.equal(lm_head, shared)
    config = flash_t5_config_from_t5(t5_model.config, tied_lm_head=tied)
    config.architectures = [target_class.__name__]

    model = target_class(config)
    native_state = {k: v for k, v in state_dict.items() if k not in _UNUSED_T5_KEYS}
    missing, unexpected = model.load_state_dict(native_state, strict=False)
    tied_keys = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    wrong_missing = [key for key in missing if key not in tied_keys]
    if unexpected or wrong_missing:
        raise ValueError(f"Conversion mismatch: missing {wrong_missing}, unexpected {list(unexpected)}.")
    if not tied and "lm_head.weight" in state_dict:
        model.lm_head.weight.data.copy_(state_dict["lm_head.weight"])
    if getattr(t5_model, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(t5_model.generation_config)
    return model.eval()


def convert_t5_to_flash_t5(source: str, destination: str | None = None, **from_pretrained_kwargs) -> PreTrainedModel:
    """
    Loads the T5-family checkpoint `source` (folder or hub id) with transformers, converts it and, if `destination`
    is given, saves the FAT5 model there (config.json + model.safetensors, plus the tokenizer files of `source`).
    Returns the FAT5 model.
    """
    import transformers

    t5_config = AutoConfig.from_pretrained(source, **from_pretrained_kwargs)
    _check_model_type(t5_config.model_type)
    architectures = t5_config.architectures or []
    is_encoder = any("Encoder" in name for name in architectures)
    prefix = "MT5" if t5_config.model_type == "mt5" else "T5"
    class_name = f"{prefix}EncoderModel" if is_encoder else f"{prefix}ForConditionalGeneration"
    t5_model = getattr(transformers, class_name).from_pretrained(source, **from_pretrained_kwargs)
    model = convert_t5_model(t5_model)
    if destination is not None:
        model.save_pretrained(destination)
        if os.path.isdir(source):
            for name in _TOKENIZER_FILES:
                if os.path.isfile(os.path.join(source, name)):
                    shutil.copyfile(os.path.join(source, name), os.path.join(destination, name))
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert a T5 / FLAN-T5 / mT5 checkpoint to FAT5.")
    parser.add_argument("source", help="folder or hub id of a T5ForConditionalGeneration or T5EncoderModel")
    parser.add_argument("destination", help="output folder of the FAT5 checkpoint")
    args = parser.parse_args(argv)
    model = convert_t5_to_flash_t5(args.source, args.destination)
    print(f"Saved {type(model).__name__} to {args.destination}")


if __name__ == "__main__":
    main()
