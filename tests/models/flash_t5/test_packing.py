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
"""Padding-free training: `DataCollatorWithPacking` and the models' `segment_ids`.

A packed batch must train exactly as its examples one by one, unpadded: the loss (each head's own mean over examples
or tokens) and every parameter gradient, for every head, on the pure-PyTorch paths in fp64 and on the `fat5` kernels
(Triton's CPU interpreter here, fp32).
"""

import os

import pytest
import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fat5  # noqa: E402
from fat5 import DataCollatorWithPacking, FlashT5Config  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = {
    "vocab_size": 50, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4, "num_labels": 3,
    "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12, "dropout_rate": 0.0,
    "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
LENGTHS = [(11, 5), (23, 9), (7, 3), (30, 12), (16, 6)]


def features_for(head_name):
    generator = torch.Generator().manual_seed(3)
    features = []
    for length, target_length in LENGTHS:
        input_ids = torch.randint(2, 50, (length,), generator=generator)
        input_ids[-1] = 1
        feature = {"input_ids": input_ids.tolist()}
        if head_name == "FlashT5ForConditionalGeneration":
            feature["labels"] = torch.randint(2, 50, (target_length,), generator=generator).tolist()
        elif head_name == "FlashT5ForTokenClassification":
            feature["labels"] = torch.randint(0, 3, (length,), generator=generator).tolist()
        elif head_name == "FlashT5ForSequenceClassification":
            feature["labels"] = int(torch.randint(0, 3, (), generator=generator))
        else:
            start = int(torch.randint(0, length - 2, (), generator=generator))
            feature.update(start_positions=start, end_positions=start + 1)
        features.append(feature)
    return features


def example_weight(head_name, feature):
    """An example's share of a batch loss: its labelled tokens for the token means, one for the example means."""
    if head_name in ("FlashT5ForConditionalGeneration", "FlashT5ForTokenClassification"):
        return len(feature["labels"])
    return 1


def as_single_batch(feature):
    batch = {"input_ids": torch.tensor([feature["input_ids"]], device=DEVICE)}
    for name, value in feature.items():
        if name != "input_ids":
            batch[name] = torch.tensor([value], device=DEVICE)
    return batch


HEADS = [
    "FlashT5ForConditionalGeneration",
    "FlashT5ForQuestionAnswering",
    "FlashT5ForSequenceClassification",
    "FlashT5ForTokenClassification",
]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "fat5"])
@pytest.mark.parametrize("head_name", HEADS)
def test_packed_batch_trains_as_its_examples_one_by_one(head_name, attn_implementation):
    if attn_implementation == "fat5":
        pytest.importorskip("triton", reason="the fat5 attention needs Triton")
    dtype = torch.float32 if attn_implementation == "fat5" else torch.float64
    torch.manual_seed(0)
    model_class = getattr(fat5, head_name)
    model = model_class(FlashT5Config(**SETTINGS, attn_implementation=attn_implementation)).to(DEVICE, dtype)
    features = features_for(head_name)
    seq2seq = head_name == "FlashT5ForConditionalGeneration"
    collator = DataCollatorWithPacking(max_length=40, decoder_max_length=16 if seq2seq else None)
    packed = {name: value.to(DEVICE) for name, value in collator(features).items()}
    # Several rows, and a row of several examples: the packing is what is tested.
    assert packed["input_ids"].shape[0] >= 2 and int(packed["segment_ids"].max()) >= 2

    parameters = list(model.parameters())
    packed_loss = model(**packed).loss
    packed_grads = torch.autograd.grad(packed_loss, parameters, allow_unused=True)

    total_weight = sum(example_weight(head_name, feature) for feature in features)
    expected_loss = 0.0
    for feature in features:
        share = example_weight(head_name, feature) / total_weight
        expected_loss = expected_loss + share * model(**as_single_batch(feature)).loss
    expected_grads = torch.autograd.grad(expected_loss, parameters, allow_unused=True)

    # Errors relative to the loss and to the norm of all the gradients: fp64 models still take their RMSNorm
    # statistics in fp32 (as every dtype does), which the packed and the single batches sum in another order.
    tolerance = 1e-4 if dtype == torch.float32 else 1e-6
    assert abs(packed_loss.item() - expected_loss.item()) <= tolerance * abs(expected_loss.item())
    for (name, _), got, want in zip(model.named_parameters(), packed_grads, expected_grads):
        assert (got is None or not got.any()) if want is None else got is not None, name
    pairs = [(got, want) for got, want in zip(packed_grads, expected_grads) if want is not None]
    difference = torch.cat([(got - want).flatten() for got, want in pairs]).norm()
    assert difference < tolerance * torch.cat([want.flatten() for _, want in pairs]).norm()


def test_collator_packs_in_order_into_full_rows():
    features = [{"input_ids": [5] * length, "labels": [7] * targets} for length, targets in LENGTHS]
    batch = DataCollatorWithPacking(max_length=40, decoder_max_length=16)(features)
    # Rows: (11 + 23 inputs, 5 + 9 targets), (7 + 30, 3 + 12), (16, 6): the targets close the second row.
    assert batch["input_ids"].shape == (3, 40) and batch["labels"].shape == (3, 16)
    assert batch["segment_ids"][0].tolist() == [1] * 11 + [2] * 23 + [0] * 6
    assert batch["decoder_segment_ids"][1].tolist() == [1] * 3 + [2] * 12 + [0]
    assert batch["attention_mask"].tolist() == (batch["segment_ids"] != 0).long().tolist()
    assert batch["labels"][2].tolist() == [7] * 6 + [-100] * 10


def test_collator_fills_an_earlier_row_first():
    # Closing rows in turn would give three (30 | 20 + 8 | 15); first fit puts the 8 after the 30, the 15 after the 20.
    features = [{"input_ids": [5] * length, "labels": [7] * 2} for length in (30, 20, 8, 15)]
    batch = DataCollatorWithPacking(max_length=40, decoder_max_length=16)(features)
    assert batch["segment_ids"].tolist() == [[1] * 30 + [2] * 8 + [0] * 2, [1] * 20 + [2] * 15 + [0] * 5]
    # A row full of targets is passed over for the next one with room.
    features = [{"input_ids": [5], "labels": [7] * targets} for targets in (10, 10, 6)]
    batch = DataCollatorWithPacking(max_length=40, decoder_max_length=16)(features)
    assert batch["decoder_segment_ids"].tolist() == [[1] * 10 + [2] * 6, [1] * 10 + [0] * 6]


def test_collator_places_per_example_labels_by_segment():
    features = [
        {"input_ids": [5] * 4, "start_positions": 1, "end_positions": 2},
        {"input_ids": [5] * 3, "start_positions": 0, "end_positions": 2},
    ]
    batch = DataCollatorWithPacking(max_length=10, max_examples_per_row=4)(features)
    assert batch["start_positions"].tolist() == [[1, 4, -100, -100]]
    # An answer truncated away (a position past its example) is ignored, as the unpacked heads ignore it.
    truncated = DataCollatorWithPacking(max_length=10)(
        [{"input_ids": [5] * 4, "start_positions": 4, "end_positions": 9}]
    )
    assert truncated["start_positions"][0, 0].item() == -100 and truncated["end_positions"][0, 0].item() == -100
    assert batch["end_positions"].tolist() == [[2, 6, -100, -100]]
    labels = DataCollatorWithPacking(max_length=10, max_examples_per_row=2)(
        [{"input_ids": [5] * 4, "labels": 2}, {"input_ids": [5] * 4, "labels": 0}, {"input_ids": [5], "labels": 1}]
    )["labels"]
    assert labels.tolist() == [[2, 0], [1, -100]]


def test_collator_refuses_what_it_cannot_pack():
    collator = DataCollatorWithPacking(max_length=8, decoder_max_length=4)
    with pytest.raises(ValueError, match="more than a row's `max_length`=8"):
        collator([{"input_ids": [5] * 9, "labels": [1]}])
    with pytest.raises(ValueError, match="more than a row's `decoder_max_length`=4"):
        collator([{"input_ids": [5] * 2, "labels": [1] * 5}])
    with pytest.raises(ValueError, match="empty list"):
        collator([])
    with pytest.raises(ValueError, match="`start_positions`=-1 is negative"):
        DataCollatorWithPacking(max_length=8)([{"input_ids": [5] * 3, "start_positions": -1, "end_positions": 0}])
    with pytest.raises(ValueError, match="mix labels of different heads"):
        DataCollatorWithPacking(max_length=8)(
            [{"input_ids": [5], "labels": 1}, {"input_ids": [5], "start_positions": 0, "end_positions": 0}]
        )


def test_fire_refuses_packed_rows():
    """FIRE's bias depends on each query's absolute position, which packing changes: refused, not silently wrong."""
    model = fat5.FlashT5ForTokenClassification(
        FlashT5Config(**SETTINGS, position_encoding_type="fire", attn_implementation="sdpa")
    )
    batch = DataCollatorWithPacking(max_length=20)([{"input_ids": [5] * 4, "labels": [0] * 4}] * 2)
    with pytest.raises(ValueError, match="FIRE"):
        model(**batch)
