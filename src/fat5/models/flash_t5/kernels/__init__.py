# Copyright 2026 The FAT5 Authors. Licensed under the Apache License, Version 2.0.
"""FAT5's Triton kernels, plugged into transformers through its extension points.

`register_fat5_attention()` adds the `fat5` attention implementation (AttentionInterface) and its mask function
(AttentionMaskInterface, which hands the kernel the 2D key-padding mask rather than an N x N one). Importing this
package never imports Triton: the kernel modules are imported on first use, so the model runs on machines without
Triton or a GPU.
"""

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from transformers.utils import logging

from .utils import is_decode_step, is_triton_available, kernels_can_run


logger = logging.get_logger(__name__)

ATTENTION_NAME = "fat5"


def fat5_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function of the `fat5` implementation (see `attention.fat5_attention`)."""
    if not is_triton_available():
        raise ImportError(
            "attn_implementation='fat5' needs Triton (`pip install triton`); use 'sdpa' on machines without it."
        )
    if kwargs.get("output_attentions", False):
        logger.warning_once(
            "`fat5` attention does not compute attention weights (`output_attentions=True`): the returned attentions "
            "are empty. Load the model with attn_implementation='eager' to get them."
        )
    from .attention import fat5_attention

    return fat5_attention(module, query, key, value, attention_mask, **kwargs)


def computes_position_bias(query_length: int, key_length: int) -> bool:
    """Whether the model should hand `fat5_attention_forward` the parameters of the position bias (the T5 table, the
    ALiBi slopes) rather than a dense (query x key) tensor: always but in decode steps, where SDPA takes a dense bias
    that the model builds once for all the layers of its stack."""
    return not is_decode_step(query_length)


fat5_attention_forward.computes_position_bias = computes_position_bias


def fat5_attention_mask(
    batch_size: int, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs
) -> torch.Tensor | None:
    """The key-padding mask as a (batch, kv_length) boolean tensor, or None when nothing is padded.

    Causality is not in it: the kernel gets `is_causal` and the query offset and masks in place. Nor is the model's
    mask function of packed rows (each example sees only itself): the kernel takes their segment ids as attention
    kwargs and masks in place too. Under `torch.compile` the mask is kept as it is: whether anything is padded depends
    on the data, which a graph cannot branch on.
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].to(torch.bool)
    if attention_mask.shape[1] == kv_length and not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None
    return attention_mask


def kernelize(model):
    """Swap FAT5's Triton RMSNorm (every `FlashT5LayerNorm`) and Triton LM loss into `model`, in place; returns it.

    The LM loss of a training forward given labels is `linear_cross_entropy`, the LM head fused into the loss: the
    (tokens x vocab) logits are never made (their memory decides at mT5's 250k vocabulary), and `logits` is None. In
    evaluation, and without labels, the model computes its logits, and the loss on them with the Triton cross-entropy.

    The state dict does not change (the fused norms share the parameters). The fused layers fall back to the eager
    formulas on tensors the kernels do not serve (CPU without `TRITON_INTERPRET=1`), so a kernelized model still runs
    everywhere. Attention is chosen separately, with `attn_implementation="fat5"`.

    It saves memory, not time: an H200 training step of T5-base took 12 % less memory and 23 % more time uncompiled,
    and, compiled, 18 % more time than the compiled model alone (before the LM head was fused in; likely because
    Inductor fuses each norm with its neighbours). See `benchmarks/README.md`.
    """
    if not is_triton_available():
        raise ImportError("fat5.kernelize needs Triton (`pip install triton`).")
    from ..modeling_flash_t5 import FlashT5LayerNorm
    from .cross_entropy import cross_entropy, linear_cross_entropy
    from .rms_norm import FusedT5RMSNorm

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FlashT5LayerNorm):
                fused = FusedT5RMSNorm(child.weight.shape[0], eps=child.variance_epsilon)
                fused.weight = child.weight
                setattr(parent, name, fused)
    if hasattr(model, "lm_loss"):
        config = model.config

        def fused_lm_loss(logits, labels):
            return cross_entropy(
                logits,
                labels.to(logits.device),
                ignore_index=-100,
                label_smoothing=config.label_smoothing,
                z_loss=config.z_loss,
            )

        logits_and_loss = model.logits_and_loss

        def fused_logits_and_loss(hidden_states, labels):
            # A training forward given labels takes the loss from the decoder's last hidden states chunk by chunk: no
            # (tokens x vocab) logits exist (`logits` is None; evaluation computes them).
            if labels is None or not model.training:
                return logits_and_loss(hidden_states, labels)
            loss = linear_cross_entropy(
                hidden_states,
                model.get_output_embeddings().weight,
                labels.to(hidden_states.device),
                ignore_index=-100,
                label_smoothing=config.label_smoothing,
                z_loss=config.z_loss,
            )
            return None, loss

        model.lm_loss = fused_lm_loss
        model.logits_and_loss = fused_logits_and_loss
    return model


def register_fat5_attention():
    AttentionInterface.register(ATTENTION_NAME, fat5_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, fat5_attention_mask)


__all__ = [
    "ATTENTION_NAME",
    "fat5_attention_forward",
    "fat5_attention_mask",
    "kernelize",
    "is_triton_available",
    "kernels_can_run",
    "register_fat5_attention",
]
