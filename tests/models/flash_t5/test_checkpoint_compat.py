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
"""Checkpoints of the reference FAT5 implementation load natively and give its outputs.

The fixtures under `tests/fixtures/reference_fat5/` were written and computed by the reference implementation itself
(see their README and `utils/record_reference_fixtures.py`).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DynamicCache,
    EncoderDecoderCache,
)

import fat5  # noqa: F401  (registers flash_t5 with the Auto classes)
from fat5 import (
    FlashT5Config,
    FlashT5ForConditionalGeneration,
    FlashT5ForQuestionAnswering,
    FlashT5ForSequenceClassification,
    FlashT5ForTokenClassification,
)
from fat5.models.flash_t5.checkpoint_conversion import is_legacy_config, legacy_config_to_native
from fat5.models.flash_t5.modeling_flash_t5 import FlashT5Attention
from fat5.models.flash_t5.weight_conversion import convert_legacy_state_dict


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reference_fat5"
LEGACY_KEYS = (
    "use_glu_mlp",
    "use_gelu_act",
    "attention_type",
    "use_triton_layernorm",
    "use_triton_crossentropy",
    "use_full_bias_size",
    "use_masking",
    "max_sequence_length",
    "rotary_emb_fraction",
    "fire_mlp_width",
    "auto_map",
)
LEGACY_KEY_FRAGMENTS = (
    "self_attention_layer",
    "cross_attention_layer",
    "ff_layer",
    "pe_encoding",
    ".Wq.",
    ".Wk.",
    ".Wv.",
)

VARIANTS = ["t5", "t5_relu", "alibi", "alibi_asym", "rope", "fire"]
# The reference's RoPE rotates values and cross-attention, its asymmetric ALiBi the decoder too (REFERENCE_FORMAT.md):
# the legacy loader sets the config fields that reproduce them.
REFERENCE_SEMANTICS = {
    "alibi_asym": "alibi_asymmetric_decoder",
    "rope": "rotary_value_and_cross_attention",
}
# The Triton kernels run on a GPU, or on the CPU through Triton's interpreter (`make test` sets TRITON_INTERPRET=1).
needs_fat5_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the fat5 kernels need a GPU or TRITON_INTERPRET=1",
)
FAT5_KERNELS = pytest.param("fat5", marks=needs_fat5_kernels)
# Not flex attention: on a GPU it needs heads of 16 dimensions or more (the fixtures' have 8), and on the CPU (torch
# 2.13) it gets these fixtures' decoder self-attention wrong, whatever the position encoding (T5's too).
ATTENTIONS = ["eager", "sdpa", FAT5_KERNELS]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def recorded(variant, device="cpu"):
    return {
        key: value.to(device) for key, value in load_file(FIXTURES / variant / "inputs_outputs.safetensors").items()
    }


def model_on_device(variant, attn_implementation):
    """The fixture's model on the GPU where there is one: the kernels run there as users run them."""
    model = FlashT5ForConditionalGeneration.from_pretrained(
        FIXTURES / variant, attn_implementation=attn_implementation
    )
    return model.to(DEVICE).eval()


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_seq2seq_matches_reference(variant):
    data = recorded(variant)
    model = FlashT5ForConditionalGeneration.from_pretrained(FIXTURES / variant).eval()
    with torch.no_grad():
        out = model(input_ids=data["input_ids"], labels=data["labels"])
        masked = model(
            input_ids=data["input_ids"], decoder_input_ids=data["decoder_input_ids"], labels=data["labels_masked"]
        )
    assert_close(out.encoder_last_hidden_state, data["encoder_last_hidden_state"])
    assert_close(out.logits, data["logits"])
    assert_close(out.loss, data["loss"])
    assert_close(masked.loss, data["loss_masked"])


@pytest.mark.parametrize("attn_implementation", ATTENTIONS)
@pytest.mark.parametrize("variant", list(REFERENCE_SEMANTICS))
def test_reference_semantics_match_with_every_attention(variant, attn_implementation):
    data = recorded(variant, DEVICE)
    model = model_on_device(variant, attn_implementation)
    # Autograd on: `fat5` then runs its kernels on these short sequences (without it, they are decode steps for SDPA).
    out = model(input_ids=data["input_ids"], labels=data["labels"])
    assert_close(out.logits.detach(), data["logits"])
    assert_close(out.loss.detach(), data["loss"])


@pytest.mark.parametrize("attn_implementation", ATTENTIONS)
@pytest.mark.parametrize("variant", list(REFERENCE_SEMANTICS))
def test_reference_semantics_decode_token_by_token_with_the_cache(variant, attn_implementation):
    """One decoder token at a time against the cache gives the reference's logits (computed on the whole sequence)
    at every position: cached keys and values were rotated at their own positions, the decoder's ALiBi is built at
    the new token's."""
    data = recorded(variant, DEVICE)
    model = model_on_device(variant, attn_implementation)
    decoder_input_ids = data["decoder_input_ids"]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=data["input_ids"])
        logits = [
            model(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=decoder_input_ids[:, position : position + 1],
                cache=cache,
                use_cache=True,
            ).logits
            for position in range(decoder_input_ids.shape[1])
        ]
    assert cache.get_seq_length() == decoder_input_ids.shape[1]
    assert_close(torch.cat(logits, dim=1), data["logits"])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", list(REFERENCE_SEMANTICS))
def test_reference_semantics_generate_with_a_cache(variant, attn_implementation):
    data = recorded(variant, DEVICE)
    model = model_on_device(variant, attn_implementation)
    greedy = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
    with torch.no_grad():
        uncached = model.generate(data["input_ids"], use_cache=False, **greedy)
        dynamic = model.generate(data["input_ids"], use_cache=True, **greedy)
        static = model.generate(data["input_ids"], cache_implementation="static", **greedy)
    assert torch.equal(dynamic, uncached)
    assert torch.equal(static, uncached)


@needs_fat5_kernels
@pytest.mark.parametrize("variant", list(REFERENCE_SEMANTICS))
def test_reference_semantics_train_with_fat5_kernels(variant):
    """The kernels give the reference's loss and eager attention's gradients (asymmetric ALiBi under the causal mask
    among them)."""
    data = recorded(variant, DEVICE)
    losses, gradients = [], []
    for attn_implementation in ("eager", "fat5"):
        model = model_on_device(variant, attn_implementation)
        loss = model(input_ids=data["input_ids"], labels=data["labels"]).loss
        losses.append(loss.detach())
        gradients.append(
            dict(zip(dict(model.named_parameters()), torch.autograd.grad(loss, list(model.parameters()))))
        )
    assert_close(losses[1], data["loss"])
    for name, expected in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_decoder_inputs_from_labels_match_reference():
    data = recorded("t5")
    model = FlashT5ForConditionalGeneration.from_pretrained(FIXTURES / "t5")
    assert torch.equal(model._shift_right(data["labels"]), data["decoder_input_ids"])


def test_z_loss_is_part_of_the_loss():
    data = recorded("t5")
    model = FlashT5ForConditionalGeneration.from_pretrained(FIXTURES / "t5").eval()
    assert model.config.z_loss == pytest.approx(1e-4)
    assert model.config.label_smoothing == pytest.approx(0.1)
    with torch.no_grad():
        loss = model(input_ids=data["input_ids"], labels=data["labels"]).loss
    assert (data["loss"] - data["loss_without_z_loss"]).abs() > 1e-4  # the fixture does exercise the z-loss
    assert_close(loss, data["loss"])


def test_auto_classes_load_without_remote_code():
    config = AutoConfig.from_pretrained(FIXTURES / "t5")
    assert isinstance(config, FlashT5Config)
    model = AutoModelForSeq2SeqLM.from_pretrained(FIXTURES / "t5")
    assert isinstance(model, FlashT5ForConditionalGeneration)
    assert isinstance(AutoModelForQuestionAnswering.from_pretrained(FIXTURES / "t5_qa"), FlashT5ForQuestionAnswering)
    assert isinstance(
        AutoModelForTokenClassification.from_pretrained(FIXTURES / "t5_token_cls"), FlashT5ForTokenClassification
    )
    assert isinstance(
        AutoModelForSequenceClassification.from_pretrained(FIXTURES / "t5_seq_cls"), FlashT5ForSequenceClassification
    )


def test_legacy_config_is_mapped():
    config = FlashT5Config.from_pretrained(FIXTURES / "t5")
    assert config.feed_forward_proj == "gated-gelu_pytorch_tanh"
    assert config.attention_scale == 1.0
    assert config.position_encoding_type == "t5"
    assert config.is_encoder_decoder
    assert not config.tie_word_embeddings and not config.scale_decoder_outputs
    assert config.pad_token_id == 0 and config.decoder_start_token_id == 0
    for key in LEGACY_KEYS:
        assert not hasattr(config, key), key

    relu = FlashT5Config.from_pretrained(FIXTURES / "t5_relu")
    assert relu.feed_forward_proj == "relu"
    assert relu.attention_scale == pytest.approx(relu.num_heads**-0.5)  # reference: attention_scale None
    assert relu.pad_token_id == 0  # reference default -100
    assert relu.z_loss == 0.0

    assert FlashT5Config.from_pretrained(FIXTURES / "alibi").position_encoding_type == "alibi"
    assert FlashT5Config.from_pretrained(FIXTURES / "alibi_asym").alibi_mode == "asymmetric"
    rope = FlashT5Config.from_pretrained(FIXTURES / "rope")
    assert rope.position_encoding_type == "rope" and rope.rotary_fraction == 0.5
    fire = FlashT5Config.from_pretrained(FIXTURES / "fire")
    assert fire.position_encoding_type == "fire" and fire.fire_hidden_size == 16

    # The reference's own semantics are set where it has them, and only there.
    for variant in VARIANTS:
        variant_config = FlashT5Config.from_pretrained(FIXTURES / variant)
        for field in REFERENCE_SEMANTICS.values():
            assert getattr(variant_config, field) == (REFERENCE_SEMANTICS.get(variant) == field), (variant, field)


def test_legacy_attention_dropout_rate_is_kept():
    """The reference drops attention probabilities at `attention_dropout_rate` (0.0 here), not at `dropout_rate`."""
    config = FlashT5Config.from_pretrained(FIXTURES / "rope")
    assert config.dropout_rate == pytest.approx(0.1)
    assert config.attention_dropout_rate == 0.0
    model = FlashT5ForConditionalGeneration(config)
    attentions = [module for module in model.modules() if isinstance(module, FlashT5Attention)]
    assert len(attentions) == 6 and all(attention.dropout == 0.0 for attention in attentions)


def test_legacy_config_to_native_cases():
    base = {"model_type": "flash_t5", "num_heads": 16, "use_glu_mlp": False, "use_gelu_act": True}
    native = legacy_config_to_native(base)
    assert native["feed_forward_proj"] == "gelu_pytorch_tanh"
    assert native["attention_scale"] == pytest.approx(0.25)
    assert native["z_loss"] == 0.0
    assert native["pad_token_id"] == 0
    # the reference's attention dropout: its value, 0.0 (its default) when absent
    assert native["attention_dropout_rate"] == 0.0
    assert legacy_config_to_native({**base, "attention_dropout_rate": 0.2})["attention_dropout_rate"] == 0.2
    rope = legacy_config_to_native({**base, "position_encoding_type": "RoPE"})
    assert rope["rotary_value_and_cross_attention"] and "alibi_asymmetric_decoder" not in rope
    asymmetric = legacy_config_to_native({**base, "position_encoding_type": "ALiBi", "alibi_mode": "asymetric"})
    assert asymmetric["alibi_asymmetric_decoder"] and "rotary_value_and_cross_attention" not in asymmetric
    symmetric = legacy_config_to_native({**base, "position_encoding_type": "ALiBi", "alibi_mode": "symetric"})
    assert "alibi_asymmetric_decoder" not in symmetric
    # older hub revisions say use_flash_attention instead of attention_type
    older = legacy_config_to_native({**base, "use_flash_attention": "ref", "use_triton_gated_mlp": False})
    assert "use_flash_attention" not in older and "use_triton_gated_mlp" not in older
    assert legacy_config_to_native({**base, "use_glu_mlp": True, "use_gelu_act": False})["feed_forward_proj"] == (
        "gated-relu"
    )
    with pytest.raises(ValueError, match="xPos"):
        legacy_config_to_native({**base, "position_encoding_type": "RoPE", "rotary_scale_base": 512})
    with pytest.raises(ValueError, match="position_encoding_type"):
        legacy_config_to_native({**base, "position_encoding_type": "sinusoidal"})
    with pytest.raises(ValueError, match="UMT5"):
        legacy_config_to_native({"model_type": "umt5"})
    # native configs are left alone, apart from a stale auto_map
    plain = {"model_type": "flash_t5", "feed_forward_proj": "gated-gelu", "attention_scale": 1.0, "auto_map": {}}
    assert not is_legacy_config(plain)
    assert legacy_config_to_native(plain) == {
        "model_type": "flash_t5",
        "feed_forward_proj": "gated-gelu",
        "attention_scale": 1.0,
    }
    # native RoPE and asymmetric ALiBi keep native semantics
    for native_config in (
        {"model_type": "flash_t5", "position_encoding_type": "rope"},
        {"model_type": "flash_t5", "position_encoding_type": "alibi", "alibi_mode": "asymmetric"},
    ):
        assert legacy_config_to_native(native_config) == native_config
        config = FlashT5Config.from_dict(native_config)
        assert not config.rotary_value_and_cross_attention and not config.alibi_asymmetric_decoder


def test_state_dict_renaming_covers_every_key():
    for variant in ("t5", "t5_relu", "fire", "t5_qa", "t5_token_cls", "t5_seq_cls"):
        with safe_open(FIXTURES / variant / "model.safetensors", "pt") as f:
            keys = list(f.keys())
        renamed = convert_legacy_state_dict(dict.fromkeys(keys))
        assert len(renamed) == len(keys)
        for key in renamed:
            assert not any(fragment in key for fragment in LEGACY_KEY_FRAGMENTS), key


def test_converted_legacy_state_dict_loads_as_from_pretrained():
    reference = load_file(FIXTURES / "fire" / "model.safetensors")
    model = FlashT5ForConditionalGeneration(FlashT5Config.from_pretrained(FIXTURES / "fire"))
    missing, unexpected = model.load_state_dict(convert_legacy_state_dict(reference), strict=False)
    # The stacks' embeddings are the shared one, which the checkpoint holds once.
    assert not unexpected and set(missing) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    loaded = FlashT5ForConditionalGeneration.from_pretrained(FIXTURES / "fire")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "head_class, folder",
    [
        (FlashT5ForQuestionAnswering, "t5_qa"),
        (FlashT5ForTokenClassification, "t5_token_cls"),
        (FlashT5ForSequenceClassification, "t5_seq_cls"),
    ],
)
def test_heads_match_reference(head_class, folder):
    data = recorded("t5")
    model, info = head_class.from_pretrained(FIXTURES / folder, output_loading_info=True)
    model.eval()
    assert not info["missing_keys"], info
    with torch.no_grad():
        if head_class is FlashT5ForQuestionAnswering:
            out = model(
                input_ids=data["input_ids"],
                start_positions=data["qa_start_positions"],
                end_positions=data["qa_end_positions"],
            )
            assert_close(out.start_logits, data["qa_start_logits"])
            assert_close(out.end_logits, data["qa_end_logits"])
            assert_close(out.loss, data["qa_loss"])
        elif head_class is FlashT5ForTokenClassification:
            assert_close(model(input_ids=data["input_ids"]).logits, data["token_cls_logits"])
        else:
            assert_close(model(input_ids=data["input_ids"]).logits, data["seq_cls_logits"])


def test_head_from_seq2seq_checkpoint_takes_the_encoder():
    data = recorded("t5")
    model, info = FlashT5ForQuestionAnswering.from_pretrained(FIXTURES / "t5", output_loading_info=True)
    model.eval()
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"qa_outputs"}
    with torch.no_grad():
        hidden = model.encoder(input_ids=data["input_ids"]).last_hidden_state
    assert_close(hidden, data["encoder_last_hidden_state"])


@pytest.mark.parametrize("variant", ["t5", "fire", "t5_qa", "alibi_asym", "rope"])
def test_resave_writes_native_format_only(variant, tmp_path):
    model_class = FlashT5ForQuestionAnswering if variant == "t5_qa" else FlashT5ForConditionalGeneration
    model = model_class.from_pretrained(FIXTURES / variant).eval()
    model.save_pretrained(tmp_path)

    saved_config = json.loads((tmp_path / "config.json").read_text())
    for key in LEGACY_KEYS:
        assert key not in saved_config, key
    assert saved_config["model_type"] == "flash_t5"
    assert not list(tmp_path.glob("*.py"))
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        # FIRE's one-element vectors are saved as the scalars of the reference's checkpoints.
        fire_scalars = [key for key in keys if key.endswith(("fire.distance_scale", "fire.threshold_multiplier"))]
        assert all(f.get_slice(key).get_shape() == [] for key in fire_scalars)
    assert len(fire_scalars) == (4 if variant == "fire" else 0)
    for key in keys:
        assert not any(fragment in key for fragment in LEGACY_KEY_FRAGMENTS), key

    reloaded = model_class.from_pretrained(tmp_path).eval()
    data = recorded("t5" if variant == "t5_qa" else variant)
    with torch.no_grad():
        if variant == "t5_qa":
            assert torch.equal(reloaded(data["input_ids"]).start_logits, model(data["input_ids"]).start_logits)
        else:
            kwargs = {"input_ids": data["input_ids"], "decoder_input_ids": data["decoder_input_ids"]}
            assert torch.equal(reloaded(**kwargs).logits, model(**kwargs).logits)


def test_fresh_model_saves_native_names(tmp_path):
    config = FlashT5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu"
    )
    FlashT5ForConditionalGeneration(config).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in keys
    for key in keys:
        assert not any(fragment in key for fragment in LEGACY_KEY_FRAGMENTS), key
