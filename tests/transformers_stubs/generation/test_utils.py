"""FAT5 stand-in for transformers' `tests/generation/test_utils.py` (not shipped in the transformers sdist).

`ModelTesterMixin.test_generation_tester_mixin_inheritance` requires a test class whose model can `generate` to
inherit `GenerationTesterMixin` (and one whose model can't, not to). Upstream the mixin carries hundreds of
`generate` tests; this stand-in keeps the same hook names (`input_name`, `max_new_tokens`,
`prepare_config_and_inputs_for_generate`) and only two cheap smoke tests, run on `all_generative_model_classes`:

- greedy `generate` returns `max_new_tokens` new tokens for every input row;
- greedy `generate` gives the same tokens with and without the KV cache.

A test class inheriting it needs `model_tester.prepare_config_and_inputs_for_common()` (as `ModelTesterMixin` does).
"""

import copy

from transformers import is_torch_available
from transformers.testing_utils import torch_device


if is_torch_available():
    import torch


class GenerationTesterMixin:
    input_name = "input_ids"
    max_new_tokens = 3

    def prepare_config_and_inputs_for_generate(self, batch_size=2):
        """Config and `generate` inputs: the common inputs minus decoder/label tensors, cut to `batch_size` rows.

        The eos token is disabled so that every call produces exactly `max_new_tokens` tokens.
        """
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        ignored = {"decoder_input_ids", "decoder_attention_mask", "labels", "use_cache"}
        inputs = {
            key: value[:batch_size] if isinstance(value, torch.Tensor) else value
            for key, value in inputs_dict.items()
            if key not in ignored
        }
        text_config = config.get_text_config(decoder=True)
        if text_config.eos_token_id is not None and text_config.pad_token_id is None:
            eos = text_config.eos_token_id
            text_config.pad_token_id = eos if isinstance(eos, int) else eos[0]
        text_config.eos_token_id = None
        if hasattr(text_config, "forced_eos_token_id"):
            text_config.forced_eos_token_id = None
        return config, inputs

    def _greedy_generate(self, model, inputs, **kwargs):
        return model.generate(
            **inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens, min_new_tokens=None, **kwargs
        )

    def _generated_tokens(self, model, inputs, sequences):
        """The new tokens only (decoder-only models return the prompt in front of them)."""
        if model.config.get_text_config(decoder=True).is_encoder_decoder or model.config.is_encoder_decoder:
            return sequences[:, 1:]  # drop the decoder start token
        return sequences[:, inputs[self.input_name].shape[-1] :]

    def test_greedy_generate(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                sequences = self._greedy_generate(model, inputs)
            new_tokens = self._generated_tokens(model, inputs, sequences)
            self.assertEqual(tuple(new_tokens.shape), (inputs[self.input_name].shape[0], self.max_new_tokens))

    def test_greedy_generate_cache_consistency(self):
        for model_class in self.all_generative_model_classes:
            config, inputs = self.prepare_config_and_inputs_for_generate()
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                with_cache = self._greedy_generate(model, copy.deepcopy(inputs), use_cache=True)
                without_cache = self._greedy_generate(model, copy.deepcopy(inputs), use_cache=False)
            self.assertListEqual(with_cache.tolist(), without_cache.tolist())
