"""Checks that transformers' common tests (see `tests/conftest.py`) work, on transformers' own T5.

By default a handful of `ModelTesterMixin` tests and `ConfigTester` run (a few seconds). The whole common suite on T5
runs with `FAT5_FULL_T5_COMMON=1 pytest tests/test_common_infra.py -n 2`.
"""

import os
import unittest
from pathlib import Path

import pytest
from transformers import T5Config, is_torch_available
from transformers.testing_utils import require_torch, torch_device
from transformers_tests.generation.test_utils import GenerationTesterMixin
from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor, random_attention_mask


if is_torch_available():
    import torch
    from transformers import T5ForConditionalGeneration, T5Model


class TinyT5Tester:
    def __init__(self, parent, batch_size=4, seq_length=7, vocab_size=99, hidden_size=32, num_layers=2, num_heads=4):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length  # the common tests read these names
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_layers
        self.num_attention_heads = num_heads
        self.is_training = True

    def get_config(self):
        return T5Config(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            d_ff=37,
            d_kv=self.hidden_size // self.num_attention_heads,
            num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            relative_attention_num_buckets=8,
            dropout_rate=0.1,
            initializer_factor=0.002,
            eos_token_id=1,
            pad_token_id=0,
            bos_token_id=0,
            decoder_start_token_id=0,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(2)
        input_ids[:, -1] = 1  # eos
        inputs = {
            "input_ids": input_ids,
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
            "decoder_input_ids": ids_tensor([self.batch_size, self.seq_length], self.vocab_size),
            "decoder_attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
        }
        return self.get_config(), inputs


@require_torch
class T5CommonInfraTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    # Collected only on request: the full common suite takes minutes (see the module docstring).
    __test__ = os.environ.get("FAT5_FULL_T5_COMMON") == "1"

    all_model_classes = (T5Model, T5ForConditionalGeneration) if is_torch_available() else ()
    is_encoder_decoder = True
    test_resize_embeddings = True

    def setUp(self):
        self.model_tester = TinyT5Tester(self)
        self.config_tester = ConfigTester(self, config_class=T5Config, d_model=37)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="T5ForConditionalGeneration has no separate base model (`base_model` is the model itself)")
    def test_model_base_model_prefix(self):
        pass


def test_imports_resolve_to_the_cache():
    import transformers_tests
    import transformers_tests.test_modeling_common as common

    assert Path(transformers_tests.__file__).parent.parent.parent.name == "transformers_tests"  # .cache/…/<version>
    assert common.GenerationTesterMixin is GenerationTesterMixin
    assert floats_tensor([2, 3]).shape == (2, 3)


@pytest.mark.parametrize(
    "name",
    [
        "test_config",
        "test_save_load",
        "test_attention_outputs",
        "test_hidden_states_output",
        "test_generation_tester_mixin_inheritance",
        "test_greedy_generate",
        "test_greedy_generate_cache_consistency",
    ],
)
def test_common_tests_run_on_t5(name):
    result = unittest.TestResult()
    T5CommonInfraTest(name).run(result)
    problems = result.errors + result.failures
    assert not problems, problems[0][1]
    assert not result.skipped, result.skipped
    assert result.testsRun == 1


def test_torch_device_is_set():
    assert torch_device in {"cpu", "cuda", "xpu", "mps", "npu", "hpu", "mlu"}
    assert torch.zeros(1, device=torch_device).device.type == torch_device
