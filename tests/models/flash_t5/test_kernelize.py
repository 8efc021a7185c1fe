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
"""`fat5.kernelize`: the Triton RMSNorm and LM loss swapped into a model give the eager model's loss and gradients.

Runs on CPU through Triton's interpreter (set below when there is no CUDA), on the GPU as is.
"""

import os

import pytest
import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="kernelize swaps in Triton kernels")

import fat5  # noqa: E402
from fat5 import FlashT5Config, FlashT5ForConditionalGeneration  # noqa: E402
from fat5.models.flash_t5.kernels.rms_norm import FusedT5RMSNorm  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    # initializer_factor 0.1: T5's unit-variance init saturates the softmax of so small a model, and fp32 rounding
    # then swamps the comparison.
    config = FlashT5Config(
        vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        z_loss=1e-3, label_smoothing=0.1, dropout_rate=0.0, initializer_factor=0.1, decoder_start_token_id=0, pad_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    return FlashT5ForConditionalGeneration(config).to(DEVICE).double()


def token_batch(seed):
    """Encoder inputs (2, 11) and decoder labels (2, 7) drawn from the tiny vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 50, (2, 11), generator=generator).to(DEVICE)
    labels = torch.randint(2, 50, (2, 7), generator=generator).to(DEVICE)
    return input_ids, labels


def loss_and_grads(model, input_ids, labels):
    loss = model(input_ids=input_ids, labels=labels).loss
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


def test_kernelized_model_matches_eager_model():
    """Against the fp64 eager model, the kernelized fp32 model is within rounding of fp32, as the eager fp32 model is
    (a wrong kernel is off by orders of magnitude more)."""
    reference = tiny_model()
    eager = tiny_model().float()
    fused = fat5.kernelize(tiny_model().float())
    input_ids, labels = token_batch(1)
    labels[1, 5:] = -100

    norms = [m for m in fused.modules() if isinstance(m, FusedT5RMSNorm)]
    assert len(norms) == 2 * 2 + 3 * 2 + 2  # per block: attention(s) and FF norms; one final norm per stack
    assert fused.state_dict().keys() == reference.state_dict().keys()

    expected_loss, expected_grads = loss_and_grads(reference, input_ids, labels)
    eager_loss, eager_grads = loss_and_grads(eager, input_ids, labels)
    loss, grads = loss_and_grads(fused, input_ids, labels)
    assert abs(loss.item() - expected_loss.item()) <= 4 * abs(eager_loss.item() - expected_loss.item()) + 1e-6
    for name, actual, eager_grad, expected in zip(dict(fused.named_parameters()), grads, eager_grads, expected_grads):
        bound = 10 * relative_error(eager_grad, expected) + 1e-5
        assert relative_error(actual, expected) <= bound, name


def test_training_loss_makes_no_logits_but_evaluation_does():
    """In training, given labels, the kernelized model's loss comes from the LM head fused into the loss: no logits.
    In evaluation it computes the logits (those of the model before kernelize) and the loss on them."""
    model = tiny_model().float()
    input_ids, labels = token_batch(3)
    with torch.no_grad():
        expected = model(input_ids=input_ids, labels=labels)
        fat5.kernelize(model)
        training = model(input_ids=input_ids, labels=labels)
        evaluation = model.eval()(input_ids=input_ids, labels=labels)
    assert training.logits is None
    torch.testing.assert_close(training.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(evaluation.logits, expected.logits)
    torch.testing.assert_close(evaluation.loss, expected.loss, rtol=1e-5, atol=1e-6)


def test_fused_training_loss_takes_num_items_in_batch():
    """Given Trainer's count of the labelled tokens of the whole batch, the fused loss of each part is its share: the
    parts add up to the whole batch's loss."""
    model = fat5.kernelize(tiny_model().float())
    input_ids, labels = token_batch(4)
    labels[0, 3:] = -100
    num_items = labels.ne(-100).sum()
    with torch.no_grad():
        whole = model(input_ids=input_ids, labels=labels).loss
        parts = [
            model(input_ids=input_ids[row], labels=labels[row], num_items_in_batch=num_items).loss
            for row in ([0], [1])
        ]
    torch.testing.assert_close(parts[0] + parts[1], whole, rtol=1e-5, atol=1e-6)


def test_kernelized_model_compiles_whole():
    """torch.compile(fullgraph=True) of a kernelized model gives its eager loss and gradients: on a GPU through Inductor,
    which launches the kernels of the norm and loss ops itself (they are triton_ops there), under the CPU interpreter
    through AOT autograd (the ops are opaque there)."""
    model = fat5.kernelize(tiny_model().float())
    input_ids, labels = token_batch(2)
    expected_loss, expected_grads = loss_and_grads(model, input_ids, labels)
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    loss, grads = loss_and_grads(compiled, input_ids, labels)
    assert abs(loss.item() - expected_loss.item()) <= 1e-5 * abs(expected_loss.item())
    for name, actual, expected in zip(dict(model.named_parameters()), grads, expected_grads):
        assert relative_error(actual, expected.double()) <= 1e-4, name
