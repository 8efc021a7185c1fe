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
"""Generation with FAT5: the cache changes nothing but the cost, batching with padding changes nothing at all."""

import warnings

import pytest
import torch
from transformers.modeling_outputs import Seq2SeqLMOutput

from fat5 import FlashT5Config, FlashT5ForConditionalGeneration


VOCAB = 64
EOS = 1


def tiny_model(position_encoding_type="t5", num_decoder_layers=2, attn_implementation="sdpa", seed=0, **config_kwargs):
    torch.manual_seed(seed)
    config = FlashT5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=num_decoder_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        position_encoding_type=position_encoding_type,
        rotary_fraction=0.5,
        attn_implementation=attn_implementation,
        **config_kwargs,
    )
    return FlashT5ForConditionalGeneration(config).eval()


def encoder_inputs(batch=3, length=10, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch, length), generator=generator)
    input_ids[:, -1] = EOS
    return input_ids


GREEDY = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}


@pytest.mark.parametrize("position_encoding_type", ["t5", "alibi", "rope", "fire"])
@pytest.mark.parametrize("num_decoder_layers", [2, 3])
def test_cache_changes_nothing_but_cost(position_encoding_type, num_decoder_layers):
    model = tiny_model(position_encoding_type, num_decoder_layers)
    input_ids = encoder_inputs()
    with torch.no_grad():
        cached = model.generate(input_ids, use_cache=True, **GREEDY)
        uncached = model.generate(input_ids, use_cache=False, **GREEDY)
    assert cached.shape == (3, 13)
    assert torch.equal(cached, uncached)


def test_cached_decoding_feeds_one_token_per_step():
    """With the cache each step runs the decoder on the new token only: its cost does not grow with the output."""
    model = tiny_model()
    lengths = []
    model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        model.generate(encoder_inputs(batch=1), use_cache=True, **GREEDY)
    assert lengths == [1] * 12


def test_cached_logits_equal_full_forward():
    model = tiny_model("t5", num_decoder_layers=3)
    input_ids = encoder_inputs()
    decoder_input_ids = torch.randint(2, VOCAB, (3, 6))
    with torch.no_grad():
        full = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = model.get_encoder()(input_ids=input_ids)
        prefix = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_input_ids[:, :4], use_cache=True)
        cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values
        step = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_input_ids[:, 4:], cache=cache)
    torch.testing.assert_close(prefix.logits, full[:, :4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.logits, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_generate_warns_of_no_deprecation():
    """`generate` passes the cache under the name its transformers uses (`past_key_values` before the rename to
    `cache`): nothing the user did is deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        tiny_model().generate(encoder_inputs(), **GREEDY)


def test_past_key_values_is_the_old_name_of_cache():
    """The same step under either name; the old one warns only where transformers has the new one."""
    model = tiny_model()
    input_ids = encoder_inputs()
    decoder_input_ids = torch.randint(2, VOCAB, (3, 6))
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=input_ids)

        def step(cache_argument):
            prefix = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_input_ids[:, :4], use_cache=True)
            cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values
            rest = decoder_input_ids[:, 4:]
            return model(encoder_outputs=encoder_outputs, decoder_input_ids=rest, **{cache_argument: cache}).logits

        expected = step("cache")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old_name = step("past_key_values")
    torch.testing.assert_close(old_name, expected, rtol=0, atol=0)
    deprecations = [w for w in caught if issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message)]
    assert len(deprecations) == (1 if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else 0)


def test_beam_search_is_exhaustive_with_enough_beams():
    """With as many beams as the vocabulary allows at one step, beam search finds the best 1-token continuation."""
    model = tiny_model()
    input_ids = encoder_inputs(batch=2)
    with torch.no_grad():
        beams = model.generate(input_ids, num_beams=4, num_return_sequences=4, max_new_tokens=1, output_scores=True)
        start = torch.full((2, 1), model.config.decoder_start_token_id)
        log_probs = model(input_ids=input_ids, decoder_input_ids=start).logits[:, -1].log_softmax(-1)
    best = log_probs.topk(4, dim=-1).indices
    assert torch.equal(beams[:, 1].view(2, 4).sort(-1).values, best.sort(-1).values)


def test_beam_search_cache_changes_nothing():
    model = tiny_model("rope", num_decoder_layers=3)
    input_ids = encoder_inputs()
    with torch.no_grad():
        cached = model.generate(input_ids, num_beams=3, max_new_tokens=8, use_cache=True)
        uncached = model.generate(input_ids, num_beams=3, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)


def test_sampling_is_reproducible_and_valid():
    model = tiny_model()
    input_ids = encoder_inputs()
    with torch.no_grad():
        torch.manual_seed(7)
        first = model.generate(input_ids, do_sample=True, top_k=10, max_new_tokens=8, min_new_tokens=8)
        torch.manual_seed(7)
        second = model.generate(input_ids, do_sample=True, top_k=10, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(first, second)
    assert first.shape == (3, 9) and int(first.max()) < VOCAB


def test_max_new_tokens_and_eos():
    model = tiny_model()
    input_ids = encoder_inputs(batch=1)
    with torch.no_grad():
        free = model.generate(input_ids, max_new_tokens=6, do_sample=False)
        assert free.shape[1] <= 7
        # Declaring the first greedy token the end of sequence stops generation right after it.
        first_token = int(free[0, 1])
        stopped = model.generate(input_ids, max_new_tokens=6, do_sample=False, eos_token_id=first_token)
    assert stopped.tolist() == [free[0, :2].tolist()]


def test_generate_without_input_ids_encodes_the_bos_token():
    """With a BOS token in the config and no inputs, `generate` encodes that one token: as giving it explicitly.
    (transformers' common `test_generate_without_input_ids`, which the plugin's stand-in generation tests lack.)"""
    model = tiny_model(bos_token_id=0)
    with torch.no_grad():
        from_nothing = model.generate(max_new_tokens=5, do_sample=False)
        from_bos = model.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=5, do_sample=False)
    assert from_nothing.shape == (1, 6) and torch.equal(from_nothing, from_bos)


@pytest.mark.parametrize("position_encoding_type", ["t5", "alibi", "rope", "fire"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_padded_batch_generates_as_one_by_one(position_encoding_type, attn_implementation):
    model = tiny_model(position_encoding_type, attn_implementation=attn_implementation)
    lengths = [10, 6, 3]
    sequences = [encoder_inputs(batch=1, length=length, seed=i)[0] for i, length in enumerate(lengths)]
    # FAT5 positions are relative: padding may go on either side.
    for side in ("right", "left"):
        input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, sequence in enumerate(sequences):
            span = slice(0, len(sequence)) if side == "right" else slice(max(lengths) - len(sequence), None)
            input_ids[row, span] = sequence
            attention_mask[row, span] = 1
        with torch.no_grad():
            batched = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
            for row, sequence in enumerate(sequences):
                alone = model.generate(sequence[None], **GREEDY)
                assert torch.equal(batched[row], alone[0]), f"row {row} differs with {side} padding"


@pytest.mark.parametrize("position_encoding_type", ["t5", "alibi", "rope", "fire"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_static_cache_generates_as_dynamic_cache(position_encoding_type, attn_implementation):
    """`cache_implementation="static"` (the compilable cache): generate hands the decoder a prepared 4D mask over the
    whole preallocated cache, and the cache counts its tokens in a tensor that its update increments in place."""
    model = tiny_model(position_encoding_type, num_decoder_layers=3, attn_implementation=attn_implementation)
    input_ids = encoder_inputs()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    with torch.no_grad():
        dynamic = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
        static = model.generate(input_ids, attention_mask=attention_mask, cache_implementation="static", **GREEDY)
    assert torch.equal(static, dynamic)


def test_decoder_rejects_a_4d_mask_of_the_wrong_shape():
    model = tiny_model()
    input_ids = encoder_inputs()
    decoder_input_ids = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="4D `decoder_attention_mask` must have shape"):
        model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, decoder_attention_mask=torch.ones(3, 1, 1, 2))
