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
"""A freshly created FAT5 model starts from T5's initialisation: the per-layer scales of upstream T5's `_init_weights`,
parameter by parameter, for every head, so that pretraining or a head trained from scratch starts as T5 would."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import fat5
from fat5.models.flash_t5.convert_t5_to_flash_t5 import flash_t5_config_from_t5


SHAPE = {
    "vocab_size": 512, "d_model": 96, "d_kv": 24, "d_ff": 192, "num_layers": 2, "num_heads": 4,
    "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "initializer_factor": 0.5,
}  # fmt: skip


@pytest.mark.parametrize(
    "head_name",
    [
        "FlashT5ForConditionalGeneration",
        "FlashT5ForQuestionAnswering",
        "FlashT5ForTokenClassification",
        "FlashT5Model",
    ],
)
def test_every_parameter_starts_at_the_scale_of_upstream_t5(head_name):
    torch.manual_seed(0)
    upstream = {name: p.std().item() for name, p in T5ForConditionalGeneration(T5Config(**SHAPE)).named_parameters()}
    model = getattr(fat5, head_name)(flash_t5_config_from_t5(T5Config(**SHAPE)))
    compared = 0
    for name, parameter in model.named_parameters():
        if name in upstream:
            # The standard deviation of a few thousand draws lies within a few percent of the scale drawn with.
            assert parameter.std().item() == pytest.approx(upstream[name], rel=0.15, abs=1e-6), name
            compared += 1
    assert compared >= 10


def test_fire_and_heads_are_initialised_at_small_scales():
    """What upstream T5 has no counterpart of: FIRE's MLP and the span head start at the scale of their inputs."""
    torch.manual_seed(0)
    config = flash_t5_config_from_t5(T5Config(**SHAPE))
    config.position_encoding_type = "fire"
    model = fat5.FlashT5ForQuestionAnswering(config)
    fire = model.encoder.block[0].layer[0].SelfAttention.fire
    assert fire.mlp_out.weight.std().item() == pytest.approx(0.5 * config.fire_hidden_size**-0.5, rel=0.2)
    assert torch.equal(fire.mlp_out.bias, torch.zeros_like(fire.mlp_out.bias))
    assert model.qa_outputs.weight.std().item() == pytest.approx(0.5 * SHAPE["d_model"] ** -0.5, rel=0.2)
