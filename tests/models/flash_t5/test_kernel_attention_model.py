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
"""The whole model with `attn_implementation="fat5"` (the Triton kernels) against the same weights with "sdpa": logits,
loss, every parameter gradient (the T5 bucket table included), padding, and `generate` with the cache, for each
position encoding.

Runs on CPU through Triton's interpreter (set below when there is no CUDA), on the GPU as is.
"""

import math
import os

import pytest
import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the fat5 attention needs Triton")

from torch.distributed.fsdp import fully_shard  # noqa: E402

import fat5  # noqa: E402, F401  (registers the fat5 attention implementation)
from fat5 import FlashT5Config, FlashT5ForConditionalGeneration  # noqa: E402
from fat5.models.flash_t5.modeling_flash_t5 import FlashT5Block  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POSITION_ENCODINGS = {
    "t5": {},
    "alibi": {"position_encoding_type": "alibi"},
    "alibi-asymmetric": {"position_encoding_type": "alibi", "alibi_mode": "asymmetric"},
    "rope": {"position_encoding_type": "rope"},
    "fire": {"position_encoding_type": "fire"},
}


def model_pair(**overrides):
    settings = {
        "vocab_size": 40, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12, "dropout_rate": 0.0,
        "initializer_factor": 0.5, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
    }  # fmt: skip
    settings.update(overrides)
    torch.manual_seed(0)
    reference = FlashT5ForConditionalGeneration(FlashT5Config(**settings, attn_implementation="sdpa"))
    kernel = FlashT5ForConditionalGeneration(FlashT5Config(**settings, attn_implementation="fat5"))
    kernel.load_state_dict(reference.state_dict())
    return reference.to(DEVICE), kernel.to(DEVICE)


def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 40, (2, 37), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 23:] = 0
    labels = torch.randint(2, 40, (2, 19), generator=generator)
    labels[1, 15:] = -100
    return {
        "input_ids": input_ids.to(DEVICE),
        "attention_mask": attention_mask.to(DEVICE),
        "labels": labels.to(DEVICE),
    }


@pytest.mark.parametrize("encoding", list(POSITION_ENCODINGS))
def test_training_step_matches_sdpa(encoding):
    reference, kernel = model_pair(**POSITION_ENCODINGS[encoding])
    assert kernel.config._attn_implementation == "fat5"
    inputs = batch()
    expected = reference(**inputs)
    actual = kernel(**inputs)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-4)
    expected_grads = torch.autograd.grad(expected.loss, list(reference.parameters()))
    actual_grads = torch.autograd.grad(actual.loss, list(kernel.parameters()))
    for (name, _), got, want in zip(kernel.named_parameters(), actual_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5, msg=name)


def test_cpu_inputs_without_the_interpreter_run_sdpa_and_say_so(monkeypatch):
    """A model that got `fat5` by default on a GPU machine may run on the CPU before it moves there: the call computes
    the same function through SDPA (a dense bias from the same parameters) and says so once, rather than failing."""
    from fat5.models.flash_t5.kernels import attention

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    warnings = []
    monkeypatch.setattr(attention.logger, "warning_once", warnings.append)
    reference, kernel = model_pair()
    reference, kernel = reference.cpu(), kernel.cpu()
    inputs = {name: tensor.cpu() for name, tensor in batch().items()}
    expected, actual = reference(**inputs), kernel(**inputs)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-5, atol=1e-6)
    actual.loss.backward()
    expected.loss.backward()
    torch.testing.assert_close(
        kernel.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad,
        reference.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad,
    )
    assert warnings and all("runs SDPA" in w and "inputs on cpu" in w for w in warnings)


@pytest.fixture
def one_process_group():
    """A process group of one rank, enough for FSDP2 to shard, gather and free every layer's parameters."""
    torch.distributed.init_process_group(
        "nccl" if DEVICE == "cuda" else "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("encoding", list(POSITION_ENCODINGS))
def test_fsdp2_training_step_matches_sdpa(one_process_group, encoding):
    """Each FlashT5Block sharded as its own FSDP2 unit, as `examples/accelerate/fsdp.yaml` wraps them: FSDP frees a
    layer's gathered parameters after its forward, and the later layers still take the stack's position bias."""
    reference, kernel = model_pair(**POSITION_ENCODINGS[encoding])
    for module in kernel.modules():
        if isinstance(module, FlashT5Block):
            fully_shard(module)
    fully_shard(kernel)
    inputs = batch()
    expected = reference(**inputs)
    actual = kernel(**inputs)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-4, atol=1e-4)
    expected.loss.backward()
    actual.loss.backward()
    for (name, got), want in zip(kernel.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad.full_tensor(), want.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("encoding", ["t5", "alibi"])
def test_generate_with_cache_matches_sdpa(encoding, cache_implementation):
    reference, kernel = model_pair(**POSITION_ENCODINGS[encoding])
    inputs = batch()
    del inputs["labels"]
    kwargs = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False}
    expected = reference.eval().generate(**inputs, **kwargs)
    actual = kernel.eval().generate(**inputs, **kwargs, cache_implementation=cache_implementation)
    assert torch.equal(actual, expected)


def test_whole_model_compiles_in_one_graph():
    """`torch.compile(fullgraph=True)` traces a training step through the kernels' ops (opaque custom ops with fake
    implementations under the CPU interpreter, `triton_op`s traced into the graph on a GPU) and gives the
    uncompiled step's loss and gradients."""
    _, kernel = model_pair()
    inputs = batch()
    expected = kernel(**inputs).loss
    expected_grads = torch.autograd.grad(expected, list(kernel.parameters()))
    compiled = torch.compile(kernel, fullgraph=True, backend="aot_eager")
    loss = compiled(**inputs).loss
    grads = torch.autograd.grad(loss, list(kernel.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for (name, _), got, want in zip(kernel.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_static_cache_decoding_compiles_in_one_graph():
    """With a static cache, `generate` compiles the decode step (automatically on a GPU; forced here with
    `_compile_all_devices`): the `fat5` decode path traces in one graph (the static cache's tensor offset needs no
    host value) and generates what the uncompiled model with a dynamic cache does."""
    from transformers import CompileConfig

    reference, kernel = model_pair()
    inputs = batch()
    del inputs["labels"]
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    compile_config = CompileConfig(fullgraph=True, backend="aot_eager")
    compile_config._compile_all_devices = True
    expected = reference.eval().generate(**inputs, **kwargs)
    actual = kernel.eval().generate(**inputs, **kwargs, cache_implementation="static", compile_config=compile_config)
    assert hasattr(kernel, "_compiled_call"), "generate did not compile the decode step"
    assert torch.equal(actual, expected)


def test_output_attentions_is_not_silently_dropped():
    """The kernels compute no attention weights: asking for them warns (as transformers' sdpa does) instead of
    returning empty attentions without a word."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    from fat5.models.flash_t5 import kernels

    _, kernel = model_pair()
    inputs = batch()
    logger = logging.get_logger(kernels.__name__)
    logger.warning_once.cache_clear()
    with CaptureLogger(logger) as captured:
        outputs = kernel(**inputs, output_attentions=True)
    assert "does not compute attention weights" in captured.out
    assert outputs.encoder_attentions == ()


class QueryKeySizedTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every tensor an op makes whose last two dimensions are (query length, key length) of an attention."""

    def __init__(self, query_key_shapes):
        super().__init__()
        self.query_key_shapes = query_key_shapes
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape[-2:]) in self.query_key_shapes:
                self.found.append((str(func), tuple(tensor.shape)))
        return result


@pytest.mark.parametrize("encoding", ["t5", "alibi", "alibi-asymmetric", "rope"])
def test_training_with_attention_dropout_makes_no_query_by_key_tensor(encoding):
    """T5's dropout_rate applies to the attention probabilities: with it, a training step (forward and backward) on a
    padded batch stays in the kernels, with no (query x key) tensor in any attention (encoder 37 x 37, decoder
    19 x 19, cross 19 x 37), and its gradients are finite."""
    _, kernel = model_pair(**POSITION_ENCODINGS[encoding], dropout_rate=0.1)
    kernel.train()
    inputs = batch()
    with QueryKeySizedTensors({(37, 37), (19, 19), (19, 37)}) as recorder:
        loss = kernel(**inputs).loss
        loss.backward()
    assert recorder.found == []
    assert all(torch.isfinite(p.grad).all() for p in kernel.parameters() if p.grad is not None)


HEADS = ["FlashT5ForConditionalGeneration", "FlashT5ForQuestionAnswering", "FlashT5ForSequenceClassification",
         "FlashT5ForTokenClassification"]  # fmt: skip


def head_and_batch(head_name, **overrides):
    """A small model with `head_name` and a padded batch with its labels."""
    model_class = getattr(fat5, head_name)
    settings = {
        "vocab_size": 40, "d_model": 64, "d_kv": 16, "d_ff": 96, "num_layers": 2, "num_heads": 4, "num_labels": 3,
        "initializer_factor": 0.5, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
    }  # fmt: skip
    settings.update(overrides)
    torch.manual_seed(0)
    model = model_class(FlashT5Config(**settings, attn_implementation="fat5")).to(DEVICE)
    inputs = batch()
    labels = inputs.pop("labels")
    inputs["input_ids"][:, -1] = 1
    inputs["input_ids"][1, 22] = 1
    if head_name == "FlashT5ForQuestionAnswering":
        inputs.update(
            start_positions=torch.tensor([3, 5], device=DEVICE), end_positions=torch.tensor([9, 7], device=DEVICE)
        )
    elif head_name == "FlashT5ForSequenceClassification":
        inputs["labels"] = torch.tensor([2, 0], device=DEVICE)
    elif head_name == "FlashT5ForTokenClassification":
        inputs["labels"] = (inputs["input_ids"] % 3).masked_fill(inputs["attention_mask"] == 0, -100)
    else:
        inputs["labels"] = labels
    return model, inputs


@pytest.mark.skipif(DEVICE != "cuda", reason="Inductor compiles the kernels' triton_ops on a GPU only")
@pytest.mark.parametrize("head_name", HEADS)
def test_every_head_compiles_with_inductor_on_padded_batches(head_name):
    """`torch.compile(model)` (Inductor, as `Trainer(torch_compile=True)` compiles) on padded batches of two lengths:
    the loss and gradients of the uncompiled model without dropout, and a step with dropout runs."""
    model, inputs = head_and_batch(head_name, dropout_rate=0.0)
    model.train()
    expected = model(**inputs).loss
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    compiled = torch.compile(model)
    loss = compiled(**inputs).loss
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected_grads):
        if want is not None:
            # Relative to the gradient's norm: Inductor sums the embedding gradient in another order, and its
            # elements that cancel out (the padding token's) differ by more than elementwise tolerances allow. The
            # floor is for gradients that are zero in exact arithmetic, rounding alone: the QA head's bias (the
            # softmax's gradient sums to zero over the positions).
            error = (got - want).norm().item()
            assert error <= 1e-4 * want.norm().item() + 1e-6, f"{name}: error {error:.2e}, norm {want.norm():.2e}"
    shorter = {
        key: value[:, :30].contiguous() if value.dim() == 2 and value.shape[1] == 37 else value
        for key, value in inputs.items()
    }
    shorter["input_ids"][:, -1] = 1
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    for attention_module in model.modules():
        if hasattr(attention_module, "dropout") and isinstance(attention_module.dropout, float):
            attention_module.dropout = 0.1
    loss = compiled(**shorter).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.skipif(
    DEVICE != "cuda", reason="Trainer's torch_compile compiles the kernels with Inductor on a GPU only"
)
@pytest.mark.parametrize("head_name", HEADS)
def test_trainer_torch_compile_on_padded_batches(head_name, tmp_path):
    """`Trainer(torch_compile=True, bf16=True)` trains every head on padded batches with T5's dropout."""
    from transformers import Trainer, TrainingArguments

    model, inputs = head_and_batch(head_name, dropout_rate=0.1)
    examples = [{key: value[row].cpu() for key, value in inputs.items()} for row in range(2)] * 4
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, bf16=True, torch_compile=True,
        report_to=[], save_strategy="no", logging_steps=1,
    )  # fmt: skip
    trainer = Trainer(model=model, args=arguments, train_dataset=examples)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
