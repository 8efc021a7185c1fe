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
"""transformers' common model and config tests, run against every FAT5 class."""

import unittest

import torch
from transformers.testing_utils import torch_device
from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor

from fat5 import (
    FlashT5Config,
    FlashT5EncoderModel,
    FlashT5ForConditionalGeneration,
    FlashT5ForQuestionAnswering,
    FlashT5ForSequenceClassification,
    FlashT5ForTokenClassification,
    FlashT5Model,
)


class FlashT5ModelTester:
    def __init__(
        self,
        parent,
        batch_size=3,
        encoder_seq_length=9,
        decoder_seq_length=7,
        is_training=True,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        d_ff=37,
        relative_attention_num_buckets=8,
        dropout_rate=0.1,
        eos_token_id=1,
        pad_token_id=0,
        decoder_start_token_id=0,
        num_labels=3,
        is_encoder_decoder=True,
        **config_kwargs,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.encoder_seq_length = encoder_seq_length
        self.decoder_seq_length = decoder_seq_length
        # The common tests read `seq_length` for the encoder side.
        self.seq_length = encoder_seq_length
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.d_ff = d_ff
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.dropout_rate = dropout_rate
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.num_labels = num_labels
        self.is_encoder_decoder = is_encoder_decoder
        self.config_kwargs = config_kwargs

    def get_config(self):
        return FlashT5Config(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            d_ff=self.d_ff,
            d_kv=self.hidden_size // self.num_attention_heads,
            num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            dropout_rate=self.dropout_rate,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            num_labels=self.num_labels,
            is_encoder_decoder=self.is_encoder_decoder,
            **self.config_kwargs,
        )

    def prepare_config_and_inputs(self):
        # Token ids avoid pad and eos; every encoder sequence ends with eos (the classification head pools it).
        input_ids = ids_tensor([self.batch_size, self.encoder_seq_length], self.vocab_size - 2) + 2
        input_ids[:, -1] = self.eos_token_id
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, : self.encoder_seq_length // 3] = 0
        decoder_input_ids = ids_tensor([self.batch_size, self.decoder_seq_length], self.vocab_size - 2) + 2
        decoder_attention_mask = torch.ones_like(decoder_input_ids)
        decoder_attention_mask[1, -2:] = 0
        return self.get_config(), input_ids, attention_mask, decoder_input_ids, decoder_attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = self.prepare_config_and_inputs()
        inputs_dict = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.is_encoder_decoder:
            inputs_dict["decoder_input_ids"] = decoder_input_ids
            inputs_dict["decoder_attention_mask"] = decoder_attention_mask
        return config, inputs_dict


def prepare_labels(tester, model_class):
    """The labels each FAT5 class trains on (transformers' own label table knows only in-tree class names)."""
    batch_size = tester.batch_size
    if model_class is FlashT5ForConditionalGeneration:
        return {"labels": ids_tensor([batch_size, tester.decoder_seq_length], tester.vocab_size).to(torch_device)}
    if model_class is FlashT5ForSequenceClassification:
        return {"labels": ids_tensor([batch_size], tester.num_labels).to(torch_device)}
    if model_class is FlashT5ForTokenClassification:
        return {"labels": ids_tensor([batch_size, tester.encoder_seq_length], tester.num_labels).to(torch_device)}
    if model_class is FlashT5ForQuestionAnswering:
        return {
            "start_positions": ids_tensor([batch_size], tester.encoder_seq_length).to(torch_device),
            "end_positions": ids_tensor([batch_size], tester.encoder_seq_length).to(torch_device),
        }
    return {}


class FlashT5CommonTestMixin(ModelTesterMixin):
    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs_dict.update(prepare_labels(self.model_tester, model_class))
        return inputs_dict


class FlashT5ModelTest(FlashT5CommonTestMixin, unittest.TestCase):
    all_model_classes = (FlashT5Model, FlashT5ForConditionalGeneration)
    is_encoder_decoder = True

    def setUp(self):
        self.model_tester = FlashT5ModelTester(self)
        self.config_tester = ConfigTester(self, config_class=FlashT5Config, d_model=37)

    def test_config(self):
        self.config_tester.run_common_tests()


class FlashT5EncoderOnlyModelTest(FlashT5CommonTestMixin, unittest.TestCase):
    all_model_classes = (
        FlashT5EncoderModel,
        FlashT5ForSequenceClassification,
        FlashT5ForTokenClassification,
        FlashT5ForQuestionAnswering,
    )
    is_encoder_decoder = False

    def setUp(self):
        self.model_tester = FlashT5ModelTester(self, is_encoder_decoder=False)
        self.config_tester = ConfigTester(self, config_class=FlashT5Config, d_model=37)

    def test_config(self):
        self.config_tester.run_common_tests()
