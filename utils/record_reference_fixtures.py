# Copyright 2025 The FAT5 project contributors.
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
"""Record small checkpoints and outputs of the reference FAT5 implementation (github.com/catie-aq/flashT5).

The reference is *not* part of this repository and nothing of its code is copied here: this script takes the path of a
checkout of the reference, imports its modules from there, builds tiny models with fixed seeds, saves them with the
reference's own ``save_pretrained`` (so the folders look exactly like the CATIE-AQ FAT5 hub repos: legacy config keys,
``auto_map``, reference state-dict names) and records their outputs. Only those outputs (data) are committed, under
``tests/fixtures/reference_fat5/``.

The reference only runs with transformers 4.x (on 5.x, ``T5Config`` forces ``tie_word_embeddings=True`` and the
reference asserts it is False). The fixtures were recorded in a separate virtual environment:

    python3 -m venv /tmp/refvenv && . /tmp/refvenv/bin/activate
    pip install torch==2.13.0 transformers==4.37.2 einops safetensors
    git clone https://github.com/catie-aq/flashT5 /tmp/flasht5_ref
    python utils/record_reference_fixtures.py /tmp/flasht5_ref --out tests/fixtures/reference_fat5

transformers 4.37.2 is the version the CATIE-AQ hub checkpoints were written with; its ``save_pretrained`` drops the
aliases ``{encoder,decoder}.embed_tokens.weight`` of ``shared.weight`` exactly as in those checkpoints.

Everything runs on CPU in fp32 with the reference's pure-PyTorch ``ref`` attention. Two stand-ins are needed because the
reference imports optional GPU libraries:

* RoPE: the reference calls ``flash_attn.layers.rotary.apply_rotary_emb_func``. flash-attn is not installed, so a
  pure-PyTorch function with flash-attn's documented semantics (rotate the first ``rotary_dim`` channels of a
  ``(batch, seq, heads, head_dim)`` tensor with ``cos``/``sin`` tables of shape ``(seq_ro, rotary_dim / 2)``; GPT-NeoX
  half rotation, or GPT-J pairs when ``interleaved``) is put in its place, in the reference's module namespace.
* The token- and sequence-classification heads' ``forward`` crash (they pass ``head_mask``, ``output_attentions`` ...
  to an encoder stack that does not accept them), so their logits are computed from the heads' own submodules, in the
  order their ``forward`` uses them.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


VOCAB_SIZE = 128
BATCH, ENC_LEN, DEC_LEN = 2, 12, 8
EOS_TOKEN_ID = 1

# Small-model shape shared by every variant; the legacy keys follow the CATIE-AQ FAT5 hub config.json
# (e.g. CATIE-AQ/FAT5-base-flan-en): attention_type "ref", attention_scale 1.0, use_glu_mlp + use_gelu_act,
# feed_forward_proj left at "relu", z_loss 1e-4, label_smoothing 0.1, tie_word_embeddings false, pad_token_id 0.
BASE = {
    "vocab_size": VOCAB_SIZE,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "tie_word_embeddings": False,
    "attention_type": "ref",
    "attention_dropout_rate": 0.0,
}

VARIANTS = {
    # The configuration of the real hub FAT5 checkpoints.
    "t5": {
        "position_encoding_type": "t5",
        "use_glu_mlp": True,
        "use_gelu_act": True,
        "attention_scale": 1.0,
        "z_loss": 1e-4,
        "label_smoothing": 0.1,
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "max_sequence_length": 1024,
        "use_triton_layernorm": False,
        "use_triton_crossentropy": False,
        "use_full_bias_size": False,
        "use_masking": False,
        "use_randomized_position_encoding": False,
    },
    # Non-gated ReLU MLP, attention_scale left unset (the reference then scales q.k by 1/sqrt(num_heads)),
    # z-loss off, pad_token_id left at the reference's default (-100).
    "t5_relu": {
        "position_encoding_type": "t5",
        "use_glu_mlp": False,
        "use_gelu_act": False,
        "z_loss": 0.0,
    },
    "alibi": {
        "position_encoding_type": "ALiBi",
        "alibi_mode": "symetric",
        "use_glu_mlp": False,
        "use_gelu_act": True,
        "attention_scale": 1.0,
        "z_loss": 1e-4,
    },
    "alibi_asym": {
        "position_encoding_type": "ALiBi",
        "alibi_mode": "asymetric",
        "use_glu_mlp": True,
        "use_gelu_act": True,
        "attention_scale": 1.0,
        "z_loss": 1e-4,
    },
    "rope": {
        "position_encoding_type": "RoPE",
        "rotary_emb_fraction": 0.5,
        "rotary_base": 10000,
        "rotary_interleaved": False,
        "use_glu_mlp": True,
        "use_gelu_act": True,
        "attention_scale": 1.0,
        "z_loss": 1e-4,
    },
    "fire": {
        "position_encoding_type": "FIRE",
        "fire_mlp_width": 16,
        "use_glu_mlp": True,
        "use_gelu_act": True,
        "attention_scale": 1.0,
        "z_loss": 1e-4,
    },
}

HEAD_NUM_LABELS = {"qa": 2, "token_cls": 3, "seq_cls": 3}


def rotary_stand_in(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, **kwargs):
    """Pure-PyTorch equivalent of flash_attn's ``apply_rotary_emb_func`` (no cu_seqlens, integer offset)."""
    if kwargs.get("cu_seqlens") is not None:
        raise NotImplementedError("varlen rotary is not needed for the fixtures")
    seqlen = x.shape[1]
    rotary_dim = cos.shape[-1] * 2
    cos = cos[seqlen_offsets : seqlen_offsets + seqlen].to(x.dtype)[None, :, None, :]
    sin = sin[seqlen_offsets : seqlen_offsets + seqlen].to(x.dtype)[None, :, None, :]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    else:
        x1, x2 = x_rot[..., : rotary_dim // 2], x_rot[..., rotary_dim // 2 :]
        out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    out = torch.cat((out, x_pass), dim=-1)
    if inplace:
        x.copy_(out)
        return x
    return out


def import_reference(reference_path):
    sys.path.insert(0, str(Path(reference_path).resolve()))
    from src.model import configuration_flash_t5, custom_heads_flash_t5, modeling_flash_t5
    from src.utils import positional_encoding

    positional_encoding.apply_rotary_emb_func = rotary_stand_in

    def unavailable(*args, **kwargs):
        raise NotImplementedError("not used by the reference's attention forward")

    positional_encoding.apply_rotary_emb_qkv_ = unavailable
    positional_encoding.apply_rotary_emb_kv_ = unavailable
    return configuration_flash_t5, modeling_flash_t5, custom_heads_flash_t5


def perturb_(model, seed):
    """Move the parameters the reference initialises to constants (RMSNorm weights = 1, FIRE scalars) away from them,
    so that a native model that drops or misplaces one of them does not match by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("pe_encoding.c"):
                param.fill_(0.3)
            elif name.endswith("pe_encoding.L_multiplier"):
                # threshold |L_multiplier * init_L| = 6 < sequence lengths: FIRE's per-query normaliser max(i, L)
                # takes both branches
                param.fill_(6.0 / float(model.config.relative_attention_max_distance))


def clean_saved_folder(folder):
    # The reference's save_pretrained copies its configuration_flash_t5.py next to the weights (remote code):
    # that is reference code and must never enter the repository.
    for path in Path(folder).iterdir():
        if path.suffix == ".py" or path.name == "__pycache__":
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def make_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB_SIZE, (BATCH, ENC_LEN), generator=generator)
    input_ids[:, -1] = EOS_TOKEN_ID  # T5-style: every sequence ends with </s> (used by the seq-cls head)
    labels = torch.randint(2, VOCAB_SIZE, (BATCH, DEC_LEN), generator=generator)
    labels[:, -1] = EOS_TOKEN_ID
    # labels with ignored positions (-100), used with explicit decoder_input_ids
    labels_masked = labels.clone()
    labels_masked[1, -3:] = -100
    return input_ids, labels, labels_masked


def record_variant(config_module, modeling, heads, name, overrides, out_dir, seed):
    config_kwargs = {**BASE, **overrides}
    config = config_module.FlashT5Config(**config_kwargs)
    torch.manual_seed(seed)
    model = modeling.FlashT5ForConditionalGeneration(config).eval()
    perturb_(model, seed + 1)

    input_ids, labels, labels_masked = make_inputs(seed + 2)
    decoder_input_ids = model._shift_right(labels)
    with torch.no_grad():
        encoder_last_hidden_state = model.encoder(input_ids=input_ids)[0]
        out = model(input_ids=input_ids, labels=labels)
        out_masked = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, labels=labels_masked)
        out_no_labels = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
    assert torch.equal(out.logits, out_no_labels.logits)

    # the loss without its z-loss term, to tell a wrong z-loss apart from a wrong cross-entropy
    flat_logits = out.logits.float().reshape(-1, out.logits.shape[-1])
    ce_only = torch.nn.functional.cross_entropy(
        flat_logits, labels.reshape(-1), label_smoothing=config.label_smoothing or 0.0
    )

    tensors = {
        "input_ids": input_ids,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
        "labels_masked": labels_masked,
        "logits": out.logits,
        "loss": out.loss.reshape(()),
        "loss_masked": out_masked.loss.reshape(()),
        "loss_without_z_loss": ce_only.reshape(()),
        "encoder_last_hidden_state": encoder_last_hidden_state,
    }

    folder = out_dir / name
    model.save_pretrained(folder)
    clean_saved_folder(folder)

    if name == "t5":
        tensors.update(record_heads(config_module, heads, model, config_kwargs, input_ids, out_dir, name, seed))

    tensors = {key: value.detach().contiguous() for key, value in tensors.items()}
    save_file(tensors, folder / "inputs_outputs.safetensors", metadata={"variant": name})
    return {key: list(value.shape) for key, value in tensors.items()}


def record_heads(config_module, heads, seq2seq, config_kwargs, input_ids, out_dir, name, seed):
    """Each head is built with the encoder (and shared embedding) of the seq2seq model and a random head."""
    results = {}
    encoder_state = {k: v for k, v in seq2seq.state_dict().items() if k.startswith(("shared.", "encoder."))}
    classes = {
        "qa": heads.FlashT5ForQuestionAnswering,
        "token_cls": heads.FlashT5ForTokenClassification,
        "seq_cls": heads.FlashT5ForSequenceClassification,
    }
    for offset, (head, cls) in enumerate(classes.items()):
        config = config_module.FlashT5Config(**config_kwargs, num_labels=HEAD_NUM_LABELS[head])
        torch.manual_seed(seed + 10 + offset)
        model = cls(config).eval()
        missing, unexpected = model.load_state_dict(encoder_state, strict=False)
        assert not unexpected, unexpected
        assert all(not k.startswith(("shared.", "encoder.")) for k in missing), missing
        with torch.no_grad():
            if head == "qa":
                start_positions = torch.tensor([3, 5])
                end_positions = torch.tensor([4, 9])
                out = model(input_ids=input_ids, start_positions=start_positions, end_positions=end_positions)
                results["qa_start_logits"] = out.start_logits
                results["qa_end_logits"] = out.end_logits
                results["qa_start_positions"] = start_positions
                results["qa_end_positions"] = end_positions
                results["qa_loss"] = out.loss.reshape(())
            elif head == "token_cls":
                # forward() crashes (passes head_mask=... to the stack); same computation from its submodules
                hidden = model.encoder(input_ids=input_ids)[0]
                results["token_cls_logits"] = model.classifier(model.dropout(hidden))
            else:
                # forward() crashes likewise; same computation: last </s> token's state -> classification head
                hidden = model.encoder(input_ids=input_ids)[0]
                eos_mask = input_ids.eq(model.config.eos_token_id)
                pooled = hidden[eos_mask, :].view(hidden.shape[0], -1, hidden.shape[-1])[:, -1, :]
                results["seq_cls_logits"] = model.classification_head(pooled)
        folder = out_dir / f"{name}_{head}"
        model.save_pretrained(folder)
        clean_saved_folder(folder)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference_path", help="path to a checkout of github.com/catie-aq/flashT5")
    parser.add_argument("--out", default="tests/fixtures/reference_fat5", help="output folder")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    config_module, modeling, heads = import_reference(args.reference_path)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in args.variants:
        seed = 1000 * list(VARIANTS).index(name)
        summary[name] = record_variant(config_module, modeling, heads, name, VARIANTS[name], out_dir, seed)
    print(json.dumps(summary, indent=1))
    total = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    print(f"total fixture size: {total / 1024:.1f} KiB in {os.fspath(out_dir)}")


if __name__ == "__main__":
    main()
