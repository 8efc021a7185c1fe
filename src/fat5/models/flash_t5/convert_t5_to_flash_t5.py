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

    python -m fat5.models.flash_t5.convert_t5_to_flash_t5 SRC DST [--overwrite]

SRC is a folder or hub id of a `T5ForConditionalGeneration` / `MT5ForConditionalGeneration` (converted to
`FlashT5ForConditionalGeneration`) or of a `T5EncoderModel` / `MT5EncoderModel` (converted to `FlashT5EncoderModel`).
The weights keep their names (FAT5 uses T5's layout); the config is translated so that the FAT5 model gives the same
logits as transformers' T5 / mT5 class: T5 v1.0 (ReLU, tied embeddings) scales the decoder output by `d_model ** -0.5`,
T5 v1.1 / FLAN-T5 (gated GELU, untied head) and every mT5 do not. The LM head is tied in FAT5 only where the source's
head is its input embedding. Tokenizer files found in SRC are copied to DST.

DST is written whole or not at all (into a temporary folder beside it, renamed into place). The CLI refuses, before
loading anything, a DST that is a file or a non-empty folder (unless `--overwrite`), a DST that is SRC or holds it, and
a local SRC path that does not exist.
"""

import argparse
import copy
import os
import re
import shutil
import sys
import tempfile

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
# A hub repo id: `name` or `org/name`, letters, digits, `-`, `_` and `.`, not starting with a dot.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


class ConversionError(ValueError):
    """A checkpoint or path the converter refuses; the CLI prints its message as one line."""


def _check_model_type(model_type: str | None):
    if model_type == "umt5":
        raise ConversionError(
            "UMT5 cannot be converted to FAT5: UMT5 learns a relative position bias in every layer, while FAT5 (like T5) "
            "shares the bias of the first layer across the stack."
        )
    if model_type not in _T5_MODEL_TYPES:
        raise ConversionError(
            f"Only T5-family checkpoints (model_type 't5' or 'mt5') can be converted to FAT5, got {model_type!r}."
        )


def upstream_scales_decoder_outputs(t5_config) -> bool:
    """Whether transformers' model for `t5_config` multiplies the decoder output by `d_model ** -0.5` before the LM
    head, as T5 v1.0 was trained to."""
    if t5_config.model_type == "mt5":
        # MT5ForConditionalGeneration never rescales. Its config cannot tell: MT5Config forces `tie_word_embeddings`
        # to True whatever config.json says (Google's mT5 says False) and has no `scale_decoder_outputs`.
        return False
    # T5Config derives `scale_decoder_outputs` from the `tie_word_embeddings` of config.json (false: T5 v1.1); a config
    # without it (transformers 4.x) scaled exactly when the embeddings were tied.
    scale = getattr(t5_config, "scale_decoder_outputs", None)
    if scale is None:
        scale = getattr(t5_config, "tie_word_embeddings", True)
    return bool(scale)


def flash_t5_config_from_t5(t5_config, tied_lm_head: bool = True) -> FlashT5Config:
    """The `FlashT5Config` that computes what `t5_config` does. `tied_lm_head`: whether the LM head is the input
    embedding rather than a separate matrix (T5 v1.1, FLAN-T5, Google's mT5)."""
    _check_model_type(t5_config.model_type)
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
        scale_decoder_outputs=upstream_scales_decoder_outputs(t5_config),
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
        raise ConversionError(
            f"Cannot convert a {class_name}: use a (M)T5ForConditionalGeneration or a (M)T5EncoderModel."
        )

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
        raise ConversionError(f"Conversion mismatch: missing {wrong_missing}, unexpected {list(unexpected)}.")
    if not tied and "lm_head.weight" in state_dict:
        model.lm_head.weight.data.copy_(state_dict["lm_head.weight"])
    if getattr(t5_model, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(t5_model.generation_config)
    return model.eval()


def _expand(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _is_hub_id(source: str) -> bool:
    return _HUB_ID.fullmatch(source) is not None and ".." not in source


def check_paths(source: str, destination: str | None, overwrite: bool = False):
    """
    Raises a `ConversionError` for paths that would convert nothing or destroy something, before anything is loaded:
    a local `source` that does not exist (it would be tried on the hub), a `destination` that is a file, a non-empty
    folder (unless `overwrite`), `source` itself or a folder holding it.
    """
    source_path = _expand(source)
    if os.path.exists(source_path):
        if not os.path.isdir(source_path):
            raise ConversionError(f"source {source!r} is a file: give the checkpoint's folder or a hub id")
    elif not _is_hub_id(source):
        raise ConversionError(
            f"source {source!r} does not exist (a local path: hub ids have the form 'name' or 'org/name')"
        )
    if destination is None:
        return
    destination_path = _expand(destination)
    if os.path.exists(source_path) and (
        destination_path == source_path or source_path.startswith(destination_path.rstrip(os.sep) + os.sep)
    ):
        raise ConversionError(f"destination {destination!r} is the source or holds it: choose another folder")
    if os.path.lexists(destination_path) and not os.path.isdir(destination_path):
        raise ConversionError(f"destination {destination!r} exists and is not a folder")
    if os.path.isdir(destination_path) and os.listdir(destination_path) and not overwrite:
        raise ConversionError(f"destination {destination!r} is a non-empty folder; pass --overwrite to replace it")


def _save_atomically(model: PreTrainedModel, source: str, destination: str):
    """Writes the FAT5 checkpoint (and the tokenizer files of a local `source`) into a temporary folder beside
    `destination`, then renames it into place: a failure leaves `destination` as it was."""
    destination = os.path.abspath(os.path.expanduser(destination))
    parent, name = os.path.split(destination.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    aside = None  # a folder holding the destination's previous version while the new one is renamed in
    done = False
    try:
        model.save_pretrained(staging)
        source_path = _expand(source)
        if os.path.isdir(source_path):
            for file_name in _TOKENIZER_FILES:
                if os.path.isfile(os.path.join(source_path, file_name)):
                    shutil.copyfile(os.path.join(source_path, file_name), os.path.join(staging, file_name))
        if os.path.isdir(destination):
            # Renaming onto a non-empty folder fails: move the old one aside, and back if the swap fails.
            aside = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
            os.rename(destination, os.path.join(aside, name))
        try:
            os.replace(staging, destination)
        except OSError:
            if aside is not None:
                os.rename(os.path.join(aside, name), destination)
            raise
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        # Keep the previous version if it could not be put back (the error says where it is).
        if aside is not None and (done or not os.path.exists(os.path.join(aside, name))):
            shutil.rmtree(aside, ignore_errors=True)


def convert_t5_to_flash_t5(
    source: str, destination: str | None = None, overwrite: bool = False, **from_pretrained_kwargs
) -> PreTrainedModel:
    """
    Loads the T5-family checkpoint `source` (folder or hub id) with transformers, converts it and, if `destination`
    is given, saves the FAT5 model there (config.json + model.safetensors, plus the tokenizer files of `source`),
    whole or not at all. A non-empty `destination` is replaced only with `overwrite`. Returns the FAT5 model.
    """
    import transformers

    check_paths(source, destination, overwrite)
    if os.path.exists(_expand(source)):
        source = _expand(source)
    t5_config = AutoConfig.from_pretrained(source, **from_pretrained_kwargs)
    _check_model_type(t5_config.model_type)
    architectures = t5_config.architectures or []
    is_encoder = any("Encoder" in name for name in architectures)
    prefix = "MT5" if t5_config.model_type == "mt5" else "T5"
    class_name = f"{prefix}EncoderModel" if is_encoder else f"{prefix}ForConditionalGeneration"
    t5_model = getattr(transformers, class_name).from_pretrained(source, **from_pretrained_kwargs)
    model = convert_t5_model(t5_model)
    if destination is not None:
        _save_atomically(model, source, destination)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert a T5 / FLAN-T5 / mT5 checkpoint to FAT5.")
    parser.add_argument("source", help="folder or hub id of a (M)T5ForConditionalGeneration or (M)T5EncoderModel")
    parser.add_argument("destination", help="output folder of the FAT5 checkpoint (must not exist, or be empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty destination folder (atomically, once converted)"
    )
    args = parser.parse_args(argv)
    try:
        model = convert_t5_to_flash_t5(args.source, args.destination, overwrite=args.overwrite)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Saved {type(model).__name__} to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
