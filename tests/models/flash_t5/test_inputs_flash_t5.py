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
"""Bad input gets a clear error naming the problem; padding, position encodings and heads behave as documented."""

import math
import re

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModelForSequenceClassification, T5Config, T5EncoderModel

from fat5 import (
    FlashT5Config,
    FlashT5EncoderModel,
    FlashT5ForConditionalGeneration,
    FlashT5ForQuestionAnswering,
    FlashT5ForSequenceClassification,
    FlashT5ForTokenClassification,
)
from fat5.models.flash_t5.modeling_flash_t5 import FlashT5Attention


VOCAB = 64
EOS = 1


def tiny_config(**overrides):
    settings = {
        "vocab_size": VOCAB,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 48,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "dropout_rate": 0.0,
        "num_labels": 3,
        "attn_implementation": "sdpa",
    }
    settings.update(overrides)
    return FlashT5Config(**settings)


def token_ids(batch=2, length=9, seed=0):
    input_ids = torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    input_ids[:, -1] = EOS
    return input_ids


# Errors


@pytest.mark.parametrize(
    "field, value",
    [
        ("position_encoding_type", "sinusoidal"),
        ("alibi_mode", "sideways"),
        ("feed_forward_proj", "gated-gelu-relu"),
        ("relative_attention_max_distance", 3),
        ("z_loss", -1.0),
        ("label_smoothing", 1.0),
        ("attention_scale", 0.0),
        # sizes: zero-width attention or no layers would build and train without an error
        ("vocab_size", 0),
        ("d_model", 0),
        ("d_kv", 0),
        ("d_ff", 0),
        ("num_heads", 0),
        ("num_layers", 0),
        ("num_decoder_layers", 0),
        ("num_heads", -2),
        # an activation transformers does not know (a bare KeyError when the model is built)
        ("feed_forward_proj", "foo"),
        ("feed_forward_proj", "gated-foo"),
        # rates
        ("dropout_rate", -0.1),
        ("dropout_rate", 1.0),
        ("attention_dropout_rate", -0.1),
        ("attention_dropout_rate", 1.0),
        ("classifier_dropout", 1.0),
        ("layer_norm_epsilon", 0.0),
        ("layer_norm_epsilon", -1e-6),
        # the reference implementation's semantics, which only mean something for their own position encoding
        ("alibi_asymmetric_decoder", True),
        ("rotary_value_and_cross_attention", True),
    ],
)
def test_impossible_config_names_the_field(field, value):
    with pytest.raises(StrictDataclassClassValidationError, match=field) as error:
        tiny_config(**{field: value})
    assert isinstance(error.value.__cause__, ValueError)


def test_edge_of_the_valid_range_is_accepted():
    config = tiny_config(
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        classifier_dropout=0.0,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=1,
        d_kv=2,
        layer_norm_epsilon=1e-12,
        feed_forward_proj="gated-silu",
    )
    model = FlashT5ForConditionalGeneration(config).eval()
    assert model(input_ids=token_ids(), decoder_input_ids=token_ids(length=3)).logits.shape == (2, 3, VOCAB)
    rope = tiny_config(position_encoding_type="rope", rotary_value_and_cross_attention=True)
    assert rope.rotary_value_and_cross_attention
    alibi = tiny_config(position_encoding_type="alibi", alibi_mode="asymmetric", alibi_asymmetric_decoder=True)
    assert alibi.alibi_asymmetric_decoder


def test_rotary_fraction_must_select_dimensions():
    with pytest.raises(StrictDataclassClassValidationError, match="rotary_fraction"):
        tiny_config(position_encoding_type="rope", rotary_fraction=0.05)


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ({"input_ids": torch.rand(2, 9)}, TypeError, "integer token ids"),
        ({"input_ids": torch.ones(2, 9, 3, dtype=torch.long)}, ValueError, r"\(batch_size, sequence_length\)"),
        ({"input_ids": token_ids(), "attention_mask": torch.ones(2, 5)}, ValueError, "attention_mask"),
        ({"input_ids": token_ids(), "attention_mask": torch.ones(3, 9)}, ValueError, "attention_mask"),
        ({"inputs_embeds": torch.rand(2, 9)}, ValueError, "inputs_embeds"),
        ({}, ValueError, "exactly one of input_ids or inputs_embeds"),
    ],
)
def test_bad_encoder_inputs(inputs, error, message):
    model = FlashT5EncoderModel(tiny_config()).eval()
    with pytest.raises(error, match=message):
        model(**inputs)


@pytest.mark.parametrize(
    "inputs, name, shape",
    [
        ({"input_ids": torch.ones(0, 9, dtype=torch.long)}, "input_ids", (0, 9)),
        ({"input_ids": torch.ones(2, 0, dtype=torch.long)}, "input_ids", (2, 0)),
        ({"inputs_embeds": torch.ones(0, 9, 32)}, "inputs_embeds", (0, 9, 32)),
        ({"inputs_embeds": torch.ones(2, 0, 32)}, "inputs_embeds", (2, 0, 32)),
        (
            {"input_ids": token_ids(), "decoder_input_ids": torch.ones(2, 0, dtype=torch.long)},
            "decoder_input_ids",
            (2, 0),
        ),
    ],
)
def test_empty_batch_or_sequence_names_the_input(inputs, name, shape):
    model = FlashT5ForConditionalGeneration(tiny_config()).eval()
    inputs = {"decoder_input_ids": token_ids(length=4), **inputs}
    with pytest.raises(ValueError, match=rf"`{name}` has shape {re.escape(str(shape))}"):
        model(**inputs)


def test_bad_decoder_inputs():
    model = FlashT5ForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(TypeError, match="decoder_input_ids"):
        model(input_ids=token_ids(), decoder_input_ids=torch.rand(2, 4))
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        model(input_ids=token_ids(), decoder_input_ids=token_ids(length=4), decoder_attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="exactly one of decoder_input_ids or decoder_inputs_embeds"):
        model(input_ids=token_ids())


def test_sequence_classification_needs_eos_in_every_sequence():
    model = FlashT5ForSequenceClassification(tiny_config()).eval()
    input_ids = token_ids()
    input_ids[1, -1] = 5
    with pytest.raises(ValueError, match="end-of-sequence token"):
        model(input_ids=input_ids)


def test_unknown_attention_implementation():
    with pytest.raises(ValueError, match="not supported"):
        FlashT5EncoderModel(tiny_config(attn_implementation="banana"))


def test_flash_attention_cannot_carry_the_position_bias():
    with pytest.raises(ValueError, match="cannot carry FAT5's position bias"):
        FlashT5EncoderModel(tiny_config(attn_implementation="flash_attention_2"))


def test_fat5_attention_without_triton_is_a_clear_error(monkeypatch):
    """Asked for by name where Triton is missing (the default never picks it there), `fat5` says what to install. CPU
    inputs with Triton present compute through SDPA instead (test_kernel_attention_model.py)."""
    from fat5.models.flash_t5 import kernels

    monkeypatch.setattr(kernels, "is_triton_available", lambda: False)
    model = FlashT5EncoderModel(tiny_config(attn_implementation="fat5")).eval()
    with pytest.raises(ImportError, match=r"needs Triton \(`pip install triton`\); use 'sdpa'"):
        model(input_ids=token_ids())


# Padding


@pytest.mark.parametrize("position_encoding_type", ["t5", "alibi", "rope", "fire"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "flex_attention"])
def test_padding_gets_no_attention(position_encoding_type, attn_implementation):
    """Whatever the padded tokens hold, the outputs of the real tokens do not move."""
    torch.manual_seed(0)
    config = tiny_config(position_encoding_type=position_encoding_type, attn_implementation=attn_implementation)
    model = FlashT5ForConditionalGeneration(config).eval().requires_grad_(False)
    input_ids = token_ids(length=16)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 10:] = 0
    decoder_input_ids = token_ids(length=16, seed=1)
    changed = input_ids.clone()
    changed[0, 10:] = torch.randint(2, VOCAB, (6,))
    outputs = [
        model(input_ids=ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        for ids in (input_ids, changed)
    ]
    torch.testing.assert_close(
        outputs[0].encoder_last_hidden_state[0, :10], outputs[1].encoder_last_hidden_state[0, :10]
    )
    torch.testing.assert_close(outputs[0].logits, outputs[1].logits)


# Attention implementations against an independent reference


def reference_encoder_layer(model, input_ids):
    """The first encoder self-attention of a FAT5 model recomputed in float64 from its weights."""
    config = model.config
    attention = model.encoder.block[0].layer[0].SelfAttention
    norm = model.encoder.block[0].layer[0].layer_norm
    hidden = model.shared.weight.double()[input_ids]
    normed = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()
    batch, length, _ = hidden.shape

    def heads(linear):
        return (normed @ linear.weight.double().T).view(batch, length, config.num_heads, config.d_kv).transpose(1, 2)

    query, key, value = heads(attention.q), heads(attention.k), heads(attention.v)
    distance = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    bias = torch.zeros(config.num_heads, length, length, dtype=torch.float64)
    if config.position_encoding_type == "alibi":
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / config.num_heads) for h in range(config.num_heads)])
        bias = -slopes.double()[:, None, None] * distance.abs()
    if config.position_encoding_type == "rope":
        half = int(config.d_kv * config.rotary_fraction) // 2
        frequencies = config.rotary_base ** (-torch.arange(half, dtype=torch.float64) / half)
        angles = torch.arange(length, dtype=torch.float64)[:, None] * frequencies
        cos, sin = angles.cos(), angles.sin()

        def rotate(states):
            rotated = states.clone()
            if config.rotary_interleaved:
                even, odd = states[..., 0 : 2 * half : 2], states[..., 1 : 2 * half : 2]
                rotated[..., 0 : 2 * half : 2] = even * cos - odd * sin
                rotated[..., 1 : 2 * half : 2] = even * sin + odd * cos
            else:
                first, second = states[..., :half], states[..., half : 2 * half]
                rotated[..., :half] = first * cos - second * sin
                rotated[..., half : 2 * half] = first * sin + second * cos
            return rotated

        query, key = rotate(query), rotate(key)
    scores = query @ key.transpose(-1, -2) * config.attention_scale + bias
    output = (scores.softmax(-1) @ value).transpose(1, 2).reshape(batch, length, -1)
    return hidden + output @ attention.o.weight.double().T


@pytest.mark.parametrize("position_encoding_type, interleaved", [("alibi", False), ("rope", False), ("rope", True)])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_position_encodings_match_float64_reference(position_encoding_type, interleaved, attn_implementation):
    torch.manual_seed(0)
    config = tiny_config(
        position_encoding_type=position_encoding_type,
        rotary_fraction=0.5,
        rotary_interleaved=interleaved,
        attention_scale=1 / math.sqrt(8),
        attn_implementation=attn_implementation,
    )
    model = FlashT5EncoderModel(config).eval()
    input_ids = token_ids(length=12)
    captured = {}
    model.encoder.block[0].layer[0].register_forward_hook(lambda module, args, output: captured.update(out=output[0]))
    with torch.no_grad():
        model(input_ids=input_ids)
    expected = reference_encoder_layer(model, input_ids)
    # fp32 rounding, relative to the largest activation
    torch.testing.assert_close(captured["out"].double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "flex_attention"])
def test_attention_implementations_match_upstream_t5(attn_implementation):
    torch.manual_seed(0)
    t5_config = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    t5 = T5EncoderModel(t5_config).eval()
    model = FlashT5EncoderModel(tiny_config(feed_forward_proj="gated-gelu", attn_implementation=attn_implementation))
    model.load_state_dict(t5.state_dict())
    model.eval().requires_grad_(False)
    input_ids = token_ids(length=16)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    with torch.no_grad():
        expected = t5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        actual = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    torch.testing.assert_close(actual[attention_mask.bool()], expected[attention_mask.bool()], rtol=1e-5, atol=1e-5)


def test_first_layer_position_bias_is_shared_by_the_stack():
    model = FlashT5ForConditionalGeneration(tiny_config(attn_implementation="eager"))
    tables = [name for name, _ in model.named_parameters() if "relative_attention_bias" in name]
    assert tables == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    ]
    # Every layer's scores move when the shared table does.
    model.eval()
    input_ids = token_ids()
    with torch.no_grad():
        before = model(input_ids=input_ids, decoder_input_ids=input_ids, output_attentions=True)
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.add_(1.0 * torch.randn(8, 4))
        after = model(input_ids=input_ids, decoder_input_ids=input_ids, output_attentions=True)
    for layer in range(2):
        assert not torch.allclose(before.encoder_attentions[layer], after.encoder_attentions[layer])


# Attention dropout


@pytest.mark.parametrize("attention_dropout_rate", [None, 0.0, 0.3])
def test_attention_dropout_rate_round_trips(attention_dropout_rate, tmp_path):
    tiny_config(attention_dropout_rate=attention_dropout_rate).save_pretrained(tmp_path)
    assert FlashT5Config.from_pretrained(tmp_path).attention_dropout_rate == attention_dropout_rate


def attention_in_training(attn_implementation, **rates):
    """The first encoder self-attention of a model with these dropout rates, in training, on fixed inputs: its output
    and attention weights in eval mode (no dropout), then twice in training."""
    torch.manual_seed(0)
    model = FlashT5EncoderModel(tiny_config(attn_implementation=attn_implementation, **rates))
    attention = model.encoder.block[0].layer[0].SelfAttention
    hidden = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        evaluated = attention.eval()(hidden)
        trained = [attention.train()(hidden) for _ in range(2)]
    return (evaluated[0], evaluated[2]), [(output, weights) for output, _, weights in trained]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_dropout_rate_sets_the_attention_probabilities_dropout(attn_implementation):
    # 0 overrides T5's `dropout_rate` for the attention probabilities: the attention of a model in training is its
    # attention in eval mode
    (expected, _), trained = attention_in_training(attn_implementation, dropout_rate=0.5, attention_dropout_rate=0.0)
    for output, _ in trained:
        torch.testing.assert_close(output, expected, rtol=0, atol=0)
    # None is T5's behaviour (the attention probabilities are dropped at `dropout_rate`), and a rate of its own drops
    # them without `dropout_rate`
    for rates in (
        {"dropout_rate": 0.5, "attention_dropout_rate": None},
        {"dropout_rate": 0.0, "attention_dropout_rate": 0.5},
    ):
        (expected, _), trained = attention_in_training(attn_implementation, **rates)
        assert not torch.allclose(trained[0][0], expected)
        assert not torch.allclose(trained[0][0], trained[1][0])


def test_attention_dropout_rate_drops_each_probability_at_that_rate():
    """Eager attention returns the dropped probabilities: each is zero or its eval-mode value scaled by 1 / (1 - p)."""
    rate = 0.25
    (_, expected), trained = attention_in_training("eager", dropout_rate=0.0, attention_dropout_rate=rate)
    weights = trained[0][1]
    kept = weights != 0
    torch.testing.assert_close(weights[kept], expected[kept] / (1 - rate))
    dropped = (weights == 0) & (expected != 0)
    assert 0.15 < dropped.sum().item() / (expected != 0).sum().item() < 0.35


def test_attention_dropout_rate_leaves_the_other_dropouts_at_dropout_rate():
    model = FlashT5ForConditionalGeneration(tiny_config(dropout_rate=0.1, attention_dropout_rate=0.0))
    attentions = [module for module in model.modules() if isinstance(module, FlashT5Attention)]
    assert len(attentions) == 6 and all(attention.dropout == 0.0 for attention in attentions)
    assert {module.p for module in model.modules() if isinstance(module, torch.nn.Dropout)} == {0.1}


# Heads


def test_sequence_classification_pools_the_last_eos():
    model = FlashT5ForSequenceClassification(tiny_config()).eval()
    input_ids = token_ids()
    input_ids[0, 3] = EOS  # an earlier eos in the first row: the last one counts
    with torch.no_grad():
        hidden = model.encoder(input_ids=input_ids).last_hidden_state
        logits = model(input_ids=input_ids).logits
        expected = model.classification_head(hidden[:, -1])
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (1, torch.tensor([0.5, -1.0]), "regression"),
        (3, torch.tensor([2, 0]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
    ],
)
def test_sequence_classification_losses(num_labels, labels, problem_type):
    model = FlashT5ForSequenceClassification(tiny_config(num_labels=num_labels)).eval()
    output = model(input_ids=token_ids(), labels=labels)
    assert model.config.problem_type == problem_type
    logits = output.logits
    if problem_type == "regression":
        expected = torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    elif problem_type == "single_label_classification":
        expected = torch.nn.functional.cross_entropy(logits, labels)
    else:
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    torch.testing.assert_close(output.loss, expected)


def test_sequence_classification_head_resizes_on_load(tmp_path):
    FlashT5ForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert model.classification_head.out_proj.out_features == 5


def test_lm_loss_with_z_loss_and_label_smoothing_matches_float64():
    torch.manual_seed(0)
    model = FlashT5ForConditionalGeneration(tiny_config(z_loss=1e-3, label_smoothing=0.1)).eval()
    input_ids = token_ids()
    labels = token_ids(length=5, seed=3)
    labels[0, 3:] = -100
    output = model(input_ids=input_ids, labels=labels)
    logits = output.logits.double().view(-1, VOCAB)
    flat = labels.view(-1)
    kept = flat != -100
    log_probs = logits[kept].log_softmax(-1)
    nll = -log_probs.gather(1, flat[kept, None]).squeeze(1)
    smoothed = 0.9 * nll - 0.1 * log_probs.mean(-1)
    expected = smoothed.mean() + 1e-3 * torch.logsumexp(logits[kept], -1).square().mean()
    torch.testing.assert_close(output.loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_token_classification_and_question_answering_losses():
    input_ids = token_ids()
    token_model = FlashT5ForTokenClassification(tiny_config()).eval()
    labels = torch.randint(0, 3, (2, 9))
    labels[0, :2] = -100
    output = token_model(input_ids=input_ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(output.logits.view(-1, 3), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)

    qa_model = FlashT5ForQuestionAnswering(tiny_config()).eval()
    start, end = torch.tensor([1, 3]), torch.tensor([2, 50])  # an end beyond the sequence is ignored
    output = qa_model(input_ids=input_ids, start_positions=start, end_positions=end)
    start_loss = torch.nn.functional.cross_entropy(output.start_logits, start)
    end_loss = torch.nn.functional.cross_entropy(output.end_logits[:1], end[:1])
    torch.testing.assert_close(output.loss, (start_loss + end_loss) / 2)


def labels_for(head, batch):
    """Labels of every head that takes `labels`, with some rows labelling fewer items than others (-100)."""
    generator = torch.Generator().manual_seed(4)
    if head == "seq2seq":
        labels = torch.randint(2, VOCAB, (batch, 5), generator=generator)
        labels[0, 2:] = -100
        labels[3, 4:] = -100
    elif head == "token-cls":
        labels = torch.randint(0, 3, (batch, 9), generator=generator)
        labels[1, :6] = -100
    elif head == "regression":
        labels = torch.randn(batch, generator=generator)
    elif head == "single-label":
        labels = torch.randint(0, 3, (batch,), generator=generator)
    else:
        labels = torch.randint(0, 2, (batch, 3), generator=generator).float()
    return labels


@pytest.mark.parametrize("head", ["seq2seq", "token-cls", "regression", "single-label", "multi-label"])
def test_losses_given_num_items_in_batch_add_up_to_the_whole_batch_loss(head):
    """Trainer splits a batch over devices (or accumulation steps) and passes each part the count of labelled items
    of the whole: the parts' losses then add up to the loss of the whole batch, so are their gradients."""
    torch.manual_seed(0)
    if head == "seq2seq":
        model = FlashT5ForConditionalGeneration(tiny_config(z_loss=1e-3, label_smoothing=0.1))
    elif head == "token-cls":
        model = FlashT5ForTokenClassification(tiny_config())
    else:
        model = FlashT5ForSequenceClassification(tiny_config(num_labels=1 if head == "regression" else 3))
    model.eval()
    input_ids, labels = token_ids(batch=4), labels_for(head, batch=4)
    whole = model(input_ids=input_ids, labels=labels).loss
    num_items = labels.ne(-100).sum()
    parts = [
        model(input_ids=input_ids[rows], labels=labels[rows], num_items_in_batch=num_items).loss
        for rows in (slice(0, 1), slice(1, 4))
    ]
    torch.testing.assert_close(parts[0] + parts[1], whole)
    # Without the count, each part is the mean over its own items, as before.
    own_mean = parts[0] * num_items / labels[:1].ne(-100).sum()
    torch.testing.assert_close(model(input_ids=input_ids[:1], labels=labels[:1]).loss, own_mean)


def test_encoder_heads_take_a_seq2seq_checkpoint(tmp_path):
    torch.manual_seed(0)
    seq2seq = FlashT5ForConditionalGeneration(tiny_config()).eval()
    seq2seq.save_pretrained(tmp_path)
    qa, loading_info = FlashT5ForQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert set(loading_info["missing_keys"]) == {"qa_outputs.weight", "qa_outputs.bias"}
    input_ids = token_ids()
    with torch.no_grad():
        expected = seq2seq.get_encoder()(input_ids=input_ids).last_hidden_state
        actual = qa.eval().encoder(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(actual, expected)
