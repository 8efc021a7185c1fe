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
"""Loading the state dicts of the reference FAT5 implementation natively, and FIRE's scalars of every checkpoint.

The reference implementation (github.com/catie-aq/flashT5) names its modules its own way
(`...self_attention_layer.self_attention.Wq.weight`, `...ff_layer.act.wi_0.weight`, ...).
[`register_legacy_checkpoint_conversion`] registers [`weight_conversions`] with transformers' weight-conversion
mechanism (`transformers.conversion_mapping`), keyed by the model type `flash_t5`: the key renamings, load-only
(saving writes native names, never the legacy ones), and FIRE's two scalars, which the model holds as one-element
vectors and every checkpoint, native or reference, stores as 0-dim tensors.

This module is the plugin's registration. The in-tree model has no such module: `utils/export_to_transformers.py`
writes the same renamings inline into transformers' `conversion_mapping.py` and [`Reshape`] into
`core_model_loading.py`, where transformers keeps every model's.
"""

import torch
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming


class LoadOnlyWeightRenaming(WeightRenaming):
    """A `WeightRenaming` applied when loading and never reverted when saving: models save native names only."""

    def reverse_transform(self):
        # `revert_weight_conversion` keeps only the `WeightRenaming`/`WeightConverter` instances of the reversed list
        return None


def legacy_weight_renamings() -> list[WeightRenaming]:
    """The renamings from the reference's state-dict keys to the native ones, applied in order (they chain)."""
    patterns = [
        # position encodings (block 0 of each stack): T5 table, then FIRE's parameters
        (
            r"self_attention_layer\.self_attention\.pe_encoding\.relative_attention_bias\.",
            "layer.0.SelfAttention.relative_attention_bias.",
        ),
        (r"self_attention_layer\.self_attention\.pe_encoding\.c$", "layer.0.SelfAttention.fire.distance_scale"),
        (r"self_attention_layer\.self_attention\.pe_encoding\.init_L$", "layer.0.SelfAttention.fire.threshold"),
        (
            r"self_attention_layer\.self_attention\.pe_encoding\.L_multiplier$",
            "layer.0.SelfAttention.fire.threshold_multiplier",
        ),
        (r"self_attention_layer\.self_attention\.pe_encoding\.mlp\.0\.", "layer.0.SelfAttention.fire.mlp_in."),
        (r"self_attention_layer\.self_attention\.pe_encoding\.mlp\.2\.", "layer.0.SelfAttention.fire.mlp_out."),
        # attention layers
        (r"self_attention_layer\.self_attention\.", "layer.0.SelfAttention."),
        (r"self_attention_layer\.layer_norm\.", "layer.0.layer_norm."),
        (r"cross_attention_layer\.cross_attention\.", "layer.1.EncDecAttention."),
        (r"cross_attention_layer\.layer_norm\.", "layer.1.layer_norm."),
        (r"(SelfAttention|EncDecAttention)\.Wq\.", r"\1.q."),
        (r"(SelfAttention|EncDecAttention)\.Wk\.", r"\1.k."),
        (r"(SelfAttention|EncDecAttention)\.Wv\.", r"\1.v."),
        # feed-forward: layer 1 of an encoder block, layer 2 of a decoder block
        (r"encoder\.block\.(\d+)\.ff_layer\.layer_norm\.", r"encoder.block.\1.layer.1.layer_norm."),
        (r"encoder\.block\.(\d+)\.ff_layer\.act\.", r"encoder.block.\1.layer.1.DenseReluDense."),
        (r"encoder\.block\.(\d+)\.ff_layer\.wo\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
        (r"decoder\.block\.(\d+)\.ff_layer\.layer_norm\.", r"decoder.block.\1.layer.2.layer_norm."),
        (r"decoder\.block\.(\d+)\.ff_layer\.act\.", r"decoder.block.\1.layer.2.DenseReluDense."),
        (r"decoder\.block\.(\d+)\.ff_layer\.wo\.", r"decoder.block.\1.layer.2.DenseReluDense.wo."),
    ]
    return [LoadOnlyWeightRenaming(source, target) for source, target in patterns]


# FIRE's parameters that checkpoints store as 0-dim tensors and the model holds as one-element vectors.
_FIRE_SCALARS = ("fire.distance_scale", "fire.threshold_multiplier")


class Reshape(ConversionOps):
    """Loads a checkpoint tensor in another shape with the same elements; saving reshapes it back."""

    def __init__(self, saved_shape: tuple[int, ...], model_shape: tuple[int, ...]):
        self.saved_shape = saved_shape
        self.model_shape = model_shape

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target_patterns[0]: tensor.reshape(self.model_shape)}

    @property
    def reverse_op(self) -> ConversionOps:
        return Reshape(self.model_shape, self.saved_shape)


def weight_conversions() -> list[WeightRenaming | WeightConverter]:
    """Everything `flash_t5` checkpoints go through at load time: the reference's key renamings, then FIRE's scalars
    from 0-dim tensors to the model's one-element vectors (FSDP2 refuses 0-dim parameters), reversed when saving."""
    fire_scalars = [WeightConverter(name, name, [Reshape((), (1,))]) for name in _FIRE_SCALARS]
    return [*legacy_weight_renamings(), *fire_scalars]


def convert_legacy_state_dict(state_dict: dict) -> dict:
    """A reference FAT5 state dict in the model's names and shapes, for `load_state_dict` (offline equivalent of the
    load-time conversion)."""
    renamings = legacy_weight_renamings()
    converted = {}
    for key, value in state_dict.items():
        for renaming in renamings:
            key, _ = renaming.rename_source_key(key)
        if key.endswith(_FIRE_SCALARS) and isinstance(value, torch.Tensor):
            value = value.reshape(1)
        converted[key] = value
    return converted


def register_legacy_checkpoint_conversion(model_type: str = "flash_t5") -> None:
    """Registers [`weight_conversions`] for `model_type` (idempotent)."""
    register_checkpoint_conversion_mapping(model_type, weight_conversions(), overwrite=True)


__all__ = [
    "Reshape",
    "convert_legacy_state_dict",
    "legacy_weight_renamings",
    "register_legacy_checkpoint_conversion",
    "weight_conversions",
]
