"""A randomly initialised FAT5 of T5 v1.1-base shape (247.6M parameters) with the examples' BPE tokenizer, for the
multi-GPU runs of `bench_multi_gpu.sh`, which need no download.

    PYTHONPATH=src:examples python benchmarks/make_base_checkpoint.py OUTPUT_DIR
"""

import sys

import pretrain
import torch

import fat5


def main(output_dir: str) -> None:
    tokenizer = pretrain.train_tokenizer(pretrain.read_corpus(pretrain.DEFAULT_CORPUS), vocab_size=2000)
    config = pretrain.build_config(
        tokenizer, "small", hidden_size=768, d_kv=64, num_heads=12, intermediate_size=2048, num_layers=12,
        num_decoder_layers=12,
    )  # fmt: skip
    # T5's embedding size, so that the embedding and LM head cost what they cost in T5; the tokenizer uses 2000 rows.
    config.vocab_size = 32128
    torch.manual_seed(0)
    model = fat5.FlashT5ForConditionalGeneration(config)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters saved to {output_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
