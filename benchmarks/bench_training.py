"""Training-step, encoder-head and generation throughput: upstream T5 against FAT5 with the same weights, one run.

T5 v1.1-base shape (d_model 768, d_ff 2048, 12+12 layers, 12 heads, d_kv 64, gated-GELU, vocab 32128, untied), fp32
weights, bf16 autocast, fused AdamW, 16384 encoder tokens per step, decoder length L/4. Needs a CUDA GPU.

    PYTHONPATH=src python benchmarks/bench_training.py --out results.json [--lengths 512 1024 ...] [--quick]
"""

import argparse
import gc
import json
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration

import fat5
from fat5.models.flash_t5.convert_t5_to_flash_t5 import convert_t5_model


TOKENS_PER_STEP = 16384


def base_config(**overrides):
    settings = {
        "vocab_size": 32128,
        "d_model": 768,
        "d_kv": 64,
        "d_ff": 2048,
        "num_layers": 12,
        "num_heads": 12,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "dropout_rate": 0.0,
        "decoder_start_token_id": 0,
    }
    settings.update(overrides)
    return T5Config(**settings)


def build_models(attn_implementation_t5="sdpa"):
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(base_config(attn_implementation=attn_implementation_t5))
    fat5_model = convert_t5_model(t5)
    return t5, fat5_model


def release():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def time_training(model, length, steps, warmup, compile_model=False):
    batch = TOKENS_PER_STEP // length
    model = model.cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_fn = torch.compile(model) if compile_model else model
    generator = torch.Generator(device="cuda").manual_seed(0)
    input_ids = torch.randint(2, 32000, (batch, length), device="cuda", generator=generator)
    labels = torch.randint(2, 32000, (batch, length // 4), device="cuda", generator=generator)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    return {"tokens_per_s": batch * length / elapsed, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def measure(label, fn):
    try:
        result = fn()
    except torch.OutOfMemoryError:
        result = {"oom": True}
    print(f"  {label:28s} {result}", flush=True)
    release()
    return result


def time_generate(model, batch, new_tokens=128, repeats=3):
    model = model.cuda().eval()
    input_ids = torch.randint(2, 32000, (batch, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.generate(input_ids, **kwargs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model.generate(input_ids, **kwargs)
        torch.cuda.synchronize()
    return {"tokens_per_s": batch * new_tokens * repeats / (time.perf_counter() - start)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd upstream model")
    parser.add_argument("--out", default="bench_training.json")
    args = parser.parse_args()

    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, fat5 {fat5.__version__}", flush=True)
    results = {"device": torch.cuda.get_device_name(), "training": {}, "generate": {}}
    for length in args.lengths:
        print(f"L={length}, batch={TOKENS_PER_STEP // length}", flush=True)
        row = {}
        t5, fat5_model = build_models()
        print(f"  FAT5 attention: {fat5_model.config._attn_implementation}", flush=True)
        row["t5_sdpa"] = measure("upstream T5 sdpa", lambda: time_training(t5, length, args.steps, args.warmup))
        if not args.no_compile:
            row["t5_sdpa_compiled"] = measure(
                "upstream T5 sdpa compiled",
                lambda: time_training(build_models()[0], length, args.steps, args.warmup, compile_model=True),
            )
        row["fat5"] = measure("FAT5", lambda: time_training(fat5_model, length, args.steps, args.warmup))
        t5 = fat5_model = None
        release()
        results["training"][length] = row

    for batch in (1, 32):
        t5, fat5_model = build_models()
        results["generate"][batch] = {
            "t5_sdpa": measure(f"generate batch {batch} upstream", lambda: time_generate(t5, batch)),
            "fat5": measure(f"generate batch {batch} FAT5", lambda: time_generate(fat5_model, batch)),
        }
        t5 = fat5_model = None
        release()

    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print("\n| L | T5 sdpa tok/s | T5 compiled tok/s | FAT5 tok/s | FAT5 / T5 | FAT5 / compiled | peak GB T5 / FAT5 |")
    print("|---|---|---|---|---|---|---|")
    for length, row in results["training"].items():

        def value(key, field="tokens_per_s"):
            entry = row.get(key, {})
            return entry.get(field) if entry and not entry.get("oom") else None

        t5_rate, compiled_rate, fat5_rate = value("t5_sdpa"), value("t5_sdpa_compiled"), value("fat5")
        ratio = f"{fat5_rate / t5_rate:.2f}x" if fat5_rate and t5_rate else "-"
        ratio_compiled = f"{fat5_rate / compiled_rate:.2f}x" if fat5_rate and compiled_rate else "-"
        memory = f"{value('t5_sdpa', 'peak_gb') or 'OOM'} / {value('fat5', 'peak_gb') or 'OOM'}"
        print(
            f"| {length} | {t5_rate or 'OOM'} | {compiled_rate or 'OOM'} | {fat5_rate or 'OOM'} | {ratio} | "
            f"{ratio_compiled} | {memory} |"
        )


if __name__ == "__main__":
    main()
