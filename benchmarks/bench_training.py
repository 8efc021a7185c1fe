"""Training-step, encoder-head and generation throughput: upstream T5 against FAT5 with the same weights, one run.

T5 v1.1-base shape (d_model 768, d_ff 2048, 12+12 layers, 12 heads, d_kv 64, gated-GELU, vocab 32128, untied), fp32
weights, bf16 autocast, fused AdamW, 16384 encoder tokens per step, decoder length L/4. Needs a CUDA GPU.

    PYTHONPATH=src python benchmarks/bench_training.py --out results.json [--lengths 512 1024 ...]

Variants: upstream `T5ForConditionalGeneration` with sdpa and under `torch.compile` (at --upstream-compile-lengths);
FAT5 converted from the same weights with its default attention on a GPU (`fat5`, the Triton kernel), and after
`fat5.kernelize` (Triton RMSNorm and LM loss too), each also compiled (at --compile-lengths). The encoder-only QA head
(at --encoder-head-lengths, same shape): `FlashT5ForQuestionAnswering`, eager and compiled, against upstream's encoder
with a two-logit head (`T5ForTokenClassification`, the same compute). Then `generate` (greedy, 128 new tokens, batch
1 and 32, `--generate-cache dynamic|static`): the two models interleaved over five rounds, medians.
"""

import argparse
import gc
import json
import statistics
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration, T5ForTokenClassification

import fat5
from fat5.models.flash_t5.convert_t5_to_flash_t5 import convert_t5_model, flash_t5_config_from_t5


TOKENS_PER_STEP = 16384


# T5 v1.1-base: the shape the training benchmarks (this one and bench_finetune.py's QA job) measure.
T5_V1_1_BASE_SHAPE = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_heads": 12,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}


def base_config(**overrides):
    return T5Config(**{**T5_V1_1_BASE_SHAPE, "dropout_rate": 0.0, "decoder_start_token_id": 0, **overrides})


def build_upstream():
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialising on the GPU takes a fraction of the CPU's time
        return T5ForConditionalGeneration(base_config(attn_implementation="sdpa"))


def build_fat5(kernelized=False):
    with torch.device("cuda"):
        model = convert_t5_model(build_upstream())
    return fat5.kernelize(model) if kernelized else model


def build_upstream_encoder_head():
    """Upstream's encoder-only model with a two-logit linear head: the compute of an extractive QA head (upstream's
    `T5ForQuestionAnswering` runs the decoder too)."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        return T5ForTokenClassification(base_config(attn_implementation="sdpa", num_labels=2))


def build_fat5_question_answering():
    torch.manual_seed(0)
    with torch.device("cuda"):
        return fat5.FlashT5ForQuestionAnswering(flash_t5_config_from_t5(base_config()))


VARIANTS = {
    "t5_sdpa": (build_upstream, False),
    "t5_sdpa_compiled": (build_upstream, True),
    "fat5": (build_fat5, False),
    "fat5_kernelized": (lambda: build_fat5(kernelized=True), False),
    "fat5_compiled": (build_fat5, True),
    "fat5_kernelized_compiled": (lambda: build_fat5(kernelized=True), True),
}


ENCODER_HEAD_VARIANTS = {
    "t5_sdpa_encoder_head": (build_upstream_encoder_head, False),
    "fat5_question_answering": (build_fat5_question_answering, False),
    "fat5_question_answering_compiled": (build_fat5_question_answering, True),
}


def release():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def training_batch(model, batch, length):
    """A fixed random batch for `model`'s task: span positions for the QA head, a label per token for the
    token-classification head, `length // 4` target tokens for a sequence-to-sequence model."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    input_ids = torch.randint(2, 32000, (batch, length), device="cuda", generator=generator)
    if isinstance(model, fat5.FlashT5ForQuestionAnswering):
        positions = torch.randint(0, length, (2, batch), device="cuda", generator=generator)
        return {"input_ids": input_ids, "start_positions": positions[0], "end_positions": positions[1]}
    if isinstance(model, T5ForTokenClassification):
        return {
            "input_ids": input_ids,
            "labels": torch.randint(0, 2, (batch, length), device="cuda", generator=generator),
        }
    labels = torch.randint(2, 32000, (batch, length // 4), device="cuda", generator=generator)
    return {"input_ids": input_ids, "labels": labels}


def training_step(model, length, compile_model=False):
    """One training step of `model` on a fixed random batch of `length`-token sequences (TOKENS_PER_STEP in all)."""
    batch = TOKENS_PER_STEP // length
    model = model.cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_fn = torch.compile(model) if compile_model else model
    inputs = training_batch(model, batch, length)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_training(model, length, steps, warmup, compile_model=False):
    step = training_step(model, length, compile_model)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    return {
        "tokens_per_s": (TOKENS_PER_STEP // length) * length / elapsed,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
    }


def measure(label, fn):
    try:
        result = fn()
    except torch.OutOfMemoryError:
        result = {"oom": True}
    except Exception as error:  # a variant that fails (e.g. under torch.compile) is reported, not fatal to the run
        result = {"error": f"{type(error).__name__}: {error}"[:500]}
    print(f"  {label:28s} {result}", flush=True)
    release()
    return result


def time_generate(models, batch, cache_implementation="dynamic", new_tokens=128, rounds=5):
    """Greedy generation of `new_tokens` tokens for each model, interleaved over `rounds` rounds (the order of the
    models alternates): a drift of the machine's speed hits every model alike. Median and every round's tokens/s.
    With `cache_implementation="static"`, transformers compiles the decode step (its auto-compile of compilable
    caches on a GPU); the warm-up round pays for the compilation."""
    input_ids = torch.randint(2, 32000, (batch, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    kwargs = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "cache_implementation": cache_implementation,
    }
    rates = {name: [] for name in models}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for model in models.values():
            model.generate(input_ids, **kwargs)
        for round_index in range(rounds):
            names = list(models) if round_index % 2 == 0 else list(reversed(models))
            for name in names:
                torch.cuda.synchronize()
                start = time.perf_counter()
                models[name].generate(input_ids, **kwargs)
                torch.cuda.synchronize()
                rates[name].append(batch * new_tokens / (time.perf_counter() - start))
    return {name: {"tokens_per_s": statistics.median(values), "rounds": values} for name, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="*", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument(
        "--compile-lengths", type=int, nargs="*", default=[512, 1024, 2048, 4096], help="FAT5 compiled"
    )
    parser.add_argument("--upstream-compile-lengths", type=int, nargs="*", default=[1024])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--encoder-head-lengths", type=int, nargs="*", default=[512, 2048], help="encoder-only QA head, encoder tokens"
    )
    parser.add_argument("--generate-batches", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--generate-cache", default="dynamic", choices=["dynamic", "static"])
    parser.add_argument("--out", default="bench_training.json")
    args = parser.parse_args()

    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, fat5 {fat5.__version__}", flush=True)
    print(f"FAT5 attention on this machine: {build_fat5().config._attn_implementation}", flush=True)
    results = {"device": torch.cuda.get_device_name(), "training": {}, "encoder_head": {}, "generate": {}}
    for length in args.lengths:
        print(f"L={length}, batch={TOKENS_PER_STEP // length}", flush=True)
        row = {}
        for name, (build, compiled) in VARIANTS.items():
            compile_lengths = args.upstream_compile_lengths if name.startswith("t5") else args.compile_lengths
            if name not in args.variants or (compiled and length not in compile_lengths):
                continue
            row[name] = measure(
                f"{name}", lambda: time_training(build(), length, args.steps, args.warmup, compile_model=compiled)
            )
        results["training"][length] = row
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)

    for length in args.encoder_head_lengths:
        print(f"encoder head L={length}, batch={TOKENS_PER_STEP // length}", flush=True)
        results["encoder_head"][length] = {
            name: measure(
                name, lambda: time_training(build(), length, args.steps, args.warmup, compile_model=compiled)
            )
            for name, (build, compiled) in ENCODER_HEAD_VARIANTS.items()
        }
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)

    if args.generate_batches:
        models = {"t5_sdpa": build_upstream().cuda().eval(), "fat5": build_fat5().cuda().eval()}
        for batch in args.generate_batches:
            results["generate"][batch] = measure(
                f"generate batch {batch}", lambda: time_generate(models, batch, args.generate_cache)
            )
        del models
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)

    def value(row, key, field="tokens_per_s"):
        entry = row.get(key) or {}
        return entry.get(field)

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    def cell(row, name, field, fmt):
        entry = row.get(name)
        if entry is None:
            return "-"
        if entry.get(field) is not None:
            return fmt(entry[field])
        return "OOM" if entry.get("oom") else "error"

    def row_cells(row, variants):
        """(tokens/s cells, peak-memory cells, best FAT5 tokens/s) of one table row."""
        rates = " | ".join(cell(row, name, "tokens_per_s", lambda rate: f"{rate / 1e3:.1f}k") for name in variants)
        memory = " / ".join(cell(row, name, "peak_gb", lambda gb: f"{gb:.1f}") for name in variants)
        best = max(value(row, name) or 0 for name in variants if name.startswith("fat5")) or None
        return rates, memory, best

    print(
        f"\n| L (tokens/s) | {' | '.join(VARIANTS)} | best FAT5 / T5 | best FAT5 / T5 compiled "
        f"| peak GB {' / '.join(VARIANTS)} |"
    )
    print("|---" * (len(VARIANTS) + 4) + "|")
    for length, row in results["training"].items():
        rate_cells, memory, best = row_cells(row, VARIANTS)
        print(
            f"| {length} | {rate_cells} | {ratio(best, value(row, 't5_sdpa'))} | "
            f"{ratio(best, value(row, 't5_sdpa_compiled'))} | {memory} |"
        )
    print(f"\n| encoder head L (tokens/s) | {' | '.join(ENCODER_HEAD_VARIANTS)} | best FAT5 / T5 | peak GB |")
    print("|---" * (len(ENCODER_HEAD_VARIANTS) + 3) + "|")
    for length, row in results["encoder_head"].items():
        rate_cells, memory, best = row_cells(row, ENCODER_HEAD_VARIANTS)
        print(f"| {length} | {rate_cells} | {ratio(best, value(row, 't5_sdpa_encoder_head'))} | {memory} |")
    print("\n| generate batch | T5 sdpa tok/s | FAT5 tok/s | FAT5 / T5 |")
    print("|---|---|---|---|")
    for batch, row in results["generate"].items():
        t5_rate, fat5_rate = value(row, "t5_sdpa"), value(row, "fat5")
        print(
            f"| {batch} | {t5_rate and round(t5_rate)} | {fat5_rate and round(fat5_rate)} | {ratio(fat5_rate, t5_rate)} |"
        )


if __name__ == "__main__":
    main()
