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
"""T5-family checkpoints convert to FAT5 and keep their outputs (logits, greedy and beam generation)."""

import json

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    UMT5Config,
    UMT5ForConditionalGeneration,
)

import fat5  # noqa: F401
from fat5 import FlashT5EncoderModel, FlashT5ForConditionalGeneration
from fat5.models.flash_t5.convert_t5_to_flash_t5 import convert_t5_model, convert_t5_to_flash_t5, main


VOCAB = 99
NUM_DEC = 3  # unequal depths: the decoder cache must be sized by num_decoder_layers


def tiny_t5_config(version, num_decoder_layers=NUM_DEC):
    common = {
        "vocab_size": VOCAB,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 48,
        "num_layers": 2,
        "num_decoder_layers": num_decoder_layers,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 20,
        "dropout_rate": 0.0,
        "decoder_start_token_id": 0,
    }
    if version == "v1.0":  # ReLU, tied embeddings, decoder output scaled by d_model ** -0.5
        return T5Config(**common, feed_forward_proj="relu", tie_word_embeddings=True)
    return T5Config(**common, feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # v1.1 / FLAN-T5


def tiny_t5(version, seed=0, num_decoder_layers=NUM_DEC):
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(tiny_t5_config(version, num_decoder_layers)).eval()
    if version == "v1.1" and model.lm_head.weight is model.shared.weight:
        # T5 v1.1 has a separate output matrix; give it one whatever the tying rules of the installed transformers
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
    with torch.no_grad():  # move norms off 1 so that a misplaced one shows
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def inputs(seed=1, batch=3, enc_len=30, dec_len=7):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch, enc_len), generator=generator)
    decoder_input_ids = torch.randint(2, VOCAB, (batch, dec_len), generator=generator)
    decoder_input_ids[:, 0] = 0
    return input_ids, decoder_input_ids


def assert_relative_close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp(min=1e-6)
    assert ((actual - expected).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_converted_logits_match(version):
    t5 = tiny_t5(version)
    fat5_model = convert_t5_model(t5)
    assert isinstance(fat5_model, FlashT5ForConditionalGeneration)
    assert fat5_model.config.scale_decoder_outputs == (version == "v1.0")
    assert fat5_model.config.tie_word_embeddings == (version == "v1.0")
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
        actual = fat5_model(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
    assert_relative_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    assert_relative_close(actual.logits, expected.logits)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_converted_generate_matches(version, num_beams):
    # Upstream T5's own generate sizes its cache by the encoder depth (transformers 5.24), so compare at equal depths;
    # FAT5 with a deeper decoder is covered by the generation tests.
    t5 = tiny_t5(version, num_decoder_layers=2)
    fat5_model = convert_t5_model(t5)
    input_ids, _ = inputs(batch=2, enc_len=12)
    kwargs = {"max_new_tokens": 10, "num_beams": num_beams, "do_sample": False, "min_new_tokens": 10}
    with torch.no_grad():
        expected = t5.generate(input_ids, **kwargs)
        actual = fat5_model.generate(input_ids, **kwargs)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_convert_folder_cli_and_from_pretrained(version, tmp_path):
    t5 = tiny_t5(version)
    t5.save_pretrained(tmp_path / "t5")
    reloaded_t5 = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    main([str(tmp_path / "t5"), str(tmp_path / "fat5")])

    config = json.loads((tmp_path / "fat5" / "config.json").read_text())
    assert config["model_type"] == "flash_t5"
    assert "auto_map" not in config
    converted = FlashT5ForConditionalGeneration.from_pretrained(tmp_path / "fat5").eval()
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = reloaded_t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        actual = converted(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    assert_relative_close(actual, expected)

    # the Python entry point gives the same model
    again = convert_t5_to_flash_t5(str(tmp_path / "t5"))
    with torch.no_grad():
        assert_relative_close(again(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits, expected)


def test_from_pretrained_converts_t5_folder_on_the_fly(tmp_path):
    t5 = tiny_t5("v1.1")
    t5.save_pretrained(tmp_path)
    t5 = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    model = FlashT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        actual = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    assert_relative_close(actual, expected)


def test_encoder_model_converts():
    torch.manual_seed(0)
    t5_encoder = T5EncoderModel(tiny_t5_config("v1.1")).eval()
    converted = convert_t5_model(t5_encoder)
    assert isinstance(converted, FlashT5EncoderModel)
    input_ids, _ = inputs()
    with torch.no_grad():
        expected = t5_encoder(input_ids=input_ids).last_hidden_state
        actual = converted(input_ids=input_ids).last_hidden_state
    assert_relative_close(actual, expected)


def test_encoder_folder_converts(tmp_path):
    torch.manual_seed(0)
    t5_encoder = T5EncoderModel(tiny_t5_config("v1.0")).eval()
    t5_encoder.save_pretrained(tmp_path / "t5")
    converted = convert_t5_to_flash_t5(str(tmp_path / "t5"), str(tmp_path / "fat5"))
    assert isinstance(converted, FlashT5EncoderModel)
    reloaded = FlashT5EncoderModel.from_pretrained(tmp_path / "fat5").eval()
    input_ids, _ = inputs()
    with torch.no_grad():
        assert_relative_close(
            reloaded(input_ids=input_ids).last_hidden_state, t5_encoder(input_ids=input_ids).last_hidden_state
        )


def test_umt5_is_refused(tmp_path):
    config = UMT5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    umt5 = UMT5ForConditionalGeneration(config)
    with pytest.raises(ValueError, match="UMT5"):
        convert_t5_model(umt5)
    umt5.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="UMT5"):
        convert_t5_to_flash_t5(str(tmp_path))


def test_non_t5_is_refused(tmp_path):
    bert = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="T5-family"):
        convert_t5_model(bert)
    bert.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="T5-family"):
        convert_t5_to_flash_t5(str(tmp_path))
