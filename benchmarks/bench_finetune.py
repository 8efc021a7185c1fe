"""Finetuning with HF `Trainer` end to end, as users run it: upstream T5 against FAT5 in one run. Needs a CUDA GPU.

    PYTHONPATH=src python benchmarks/bench_finetune.py --out results_finetune_h200.json [--jobs qa seq2seq]

Two jobs, `bf16=True`, batch 32, dropout 0.1 as T5-family checkpoints carry it, random weights of the real shapes and
random tokens of realistic lengths (the device has no network; throughput and memory do not depend on the values):

- `qa`: extractive QA, T5 v1.1-base shape, inputs of 100-384 tokens. Upstream `T5ForQuestionAnswering` (what an
  upstream user finetunes) against `FlashT5ForQuestionAnswering` (encoder only, as the reference's head).
- `seq2seq`: mT5-small shape (vocab 250112, untied head), inputs of 128-512 tokens, targets of 16-64.
  `MT5ForConditionalGeneration` against `FlashT5ForConditionalGeneration` of the same shape.

Variants: upstream eager with rows padded to the longest in the batch (a multiple of 64); upstream with
`torch_compile=True` and every row padded to the job's maximum (the best an upstream user can do: one shape, one
compilation); FAT5 padded to the longest (`fat5` attention on the GPU), and with `_packed` (the README's recipe:
`fat5.DataCollatorWithPacking` rows of PACKED_ROWS tokens), `_compiled` (`torch_compile=True`), `_cudagraphs`
(compiled with `torch_compile_mode="reduce-overhead"`: each step's kernels replayed from CUDA graphs, upstream with
the fixed padding of its compiled run), `_kernelized` (`fat5.kernelize`: the LM head fused into the loss),
`_dynamicbatch` (the batch dimension of every input marked dynamic before the compiled model sees it: packed
batches' varying number of rows then compile once instead of twice). Each variant reports samples (examples)/s over
the steps after `--warmup-steps` (wall time synchronised at both ends, data loading included; the timed steps repeat
the warm-up's batches in order, so that no compilation nor CUDA-graph recording falls among them), the warm-up's wall
time (compilation included), the slowest timed step (a compilation or a CUDA-graph recording in the timed window
shows there), peak GPU memory, and the mean training loss of its last logged steps; `--profile` adds where a timed
step's time goes. `--smoke` runs tiny shapes on the CPU (with TRITON_INTERPRET=1 for the kernels): a check of the
script, not a measurement.
"""

import argparse
import gc
import json
import math
import random
import tempfile
import time

import torch
from bench_training import T5_V1_1_BASE_SHAPE
from transformers import (
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForQuestionAnswering,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import fat5
from fat5 import FlashT5Config, FlashT5ForConditionalGeneration, FlashT5ForQuestionAnswering


BATCH_SIZE = 32
PROFILED_ACTIVITIES = [torch.profiler.ProfilerActivity.CPU] + (
    [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []
)
QA_SHAPE = dict(T5_V1_1_BASE_SHAPE)
MT5_SMALL_SHAPE = {
    "vocab_size": 250112,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 1024,
    "num_layers": 8,
    "num_heads": 6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
JOBS = {
    # job: (shape, input lengths, target lengths or None)
    "qa": (QA_SHAPE, (100, 384), None),
    "seq2seq": (MT5_SMALL_SHAPE, (128, 512), (16, 64)),
}
# Packed rows: inputs and (seq2seq) targets a row, about four examples of each job's average length.
PACKED_ROWS = {"qa": (1024, None), "seq2seq": (1024, 128)}
EOS, PAD = 1, 0
FAT5_MODELS = {"qa": FlashT5ForQuestionAnswering, "seq2seq": FlashT5ForConditionalGeneration}


def synthetic_examples(job: str, count: int, seed: int = 0) -> list[dict]:
    shape, (low, high), targets = JOBS[job]
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        length = rng.randint(low, high)
        input_ids = [rng.randrange(2, shape["vocab_size"]) for _ in range(length - 1)] + [EOS]
        if targets is None:
            start = rng.randrange(0, length - 1)
            end = min(length - 2, start + rng.randint(0, 20))
            examples.append({"input_ids": input_ids, "start_positions": start, "end_positions": end})
        else:
            target_length = rng.randint(*targets)
            labels = [rng.randrange(2, shape["vocab_size"]) for _ in range(target_length - 1)] + [EOS]
            examples.append({"input_ids": input_ids, "labels": labels})
    return examples


class PaddingCollator:
    """Pads inputs (and labels, with -100) to the longest in the batch rounded up to `multiple`, or to `length`."""

    def __init__(self, multiple: int = 64, length: int | None = None, label_length: int | None = None):
        self.multiple, self.length, self.label_length = multiple, length, label_length

    def padded_length(self, longest: int, fixed: int | None) -> int:
        return fixed if fixed is not None else math.ceil(longest / self.multiple) * self.multiple

    def __call__(self, examples: list[dict]) -> dict:
        length = self.padded_length(max(len(e["input_ids"]) for e in examples), self.length)
        input_ids = torch.full((len(examples), length), PAD, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            input_ids[row, : len(example["input_ids"])] = torch.tensor(example["input_ids"])
            attention_mask[row, : len(example["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in examples[0]:
            label_multiple = 8
            longest = max(len(e["labels"]) for e in examples)
            label_length = self.label_length or math.ceil(longest / label_multiple) * label_multiple
            labels = torch.full((len(examples), label_length), -100, dtype=torch.long)
            for row, example in enumerate(examples):
                labels[row, : len(example["labels"])] = torch.tensor(example["labels"])
            batch["labels"] = labels
        else:
            batch["start_positions"] = torch.tensor([e["start_positions"] for e in examples])
            batch["end_positions"] = torch.tensor([e["end_positions"] for e in examples])
        return batch


class ThroughputCallback(TrainerCallback):
    """Wall time from the end of the warm-up to the end of the last step, synchronised with the GPU at those two
    points only: in between, the host runs ahead of the GPU as it does in a user's run (Trainer itself syncs only to
    log). Also the warm-up's wall time (compilation included) and the host's time between step ends in the timed
    window, where a compilation or a CUDA-graph recording shows as one long step."""

    def __init__(self, warmup_steps: int, profile: bool = False):
        self.warmup_steps = warmup_steps
        self.profiler = torch.profiler.profile(activities=PROFILED_ACTIVITIES) if profile else None
        self.start = None
        self.timed_steps = 0
        self.step_ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.warmup_steps:
            self.step_ends.append(time.perf_counter())
        if state.global_step not in (self.warmup_steps, state.max_steps):
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup_steps:
            if self.profiler is not None:
                self.profiler.start()
            self.start = time.perf_counter()
            self.warmup_seconds = self.start - self.train_begin
        else:
            self.timed_steps = state.global_step - self.warmup_steps
            self.elapsed = time.perf_counter() - self.start
            if self.profiler is not None:
                self.profiler.stop()

    def profile_summary(self, top: int = 15) -> dict:
        """Per timed step: the GPU's summed kernel time (against the wall time of a step it says how long the GPU
        waited on the host), the kernels that took longest, and the host operations of longest own CPU time."""
        averages = self.profiler.key_averages()
        per_step = 1 / self.timed_steps  # the profiler's times are in microseconds

        def milliseconds(events, attribute):
            ranked = sorted(events, key=lambda event: getattr(event, attribute), reverse=True)[:top]
            return {event.key[:100]: round(getattr(event, attribute) / 1e3 * per_step, 3) for event in ranked}

        kernels = [event for event in averages if event.self_device_time_total > 0]
        return {
            "gpu_kernel_ms_per_step": sum(event.self_device_time_total for event in kernels) / 1e3 * per_step,
            "wall_ms_per_step": self.elapsed * 1e3 * per_step,
            "top_kernels_ms_per_step": milliseconds(kernels, "self_device_time_total"),
            "top_host_ops_ms_per_step": milliseconds(averages, "self_cpu_time_total"),
        }

    def slowest_timed_step(self) -> float:
        ends = [self.start, *self.step_ends]
        return max(later - earlier for earlier, later in zip(ends, ends[1:]))


class DynamicBatchTrainer(Trainer):
    """Marks dimension 0 of every input tensor dynamic: torch.compile's first graph then serves every number of packed
    rows, where it would otherwise compile the first shape, then again with the number of rows dynamic."""

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                torch._dynamo.maybe_mark_dynamic(value, 0)
        return inputs


def build_model(job: str, upstream: bool, dropout: float, device: str):
    shape = dict(JOBS[job][0], dropout_rate=dropout, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(0)
    with torch.device(device):
        if upstream and job == "qa":
            return T5ForQuestionAnswering(T5Config(**shape, attn_implementation="sdpa"))
        if upstream:
            return MT5ForConditionalGeneration(MT5Config(**shape, attn_implementation="sdpa"))
        return FAT5_MODELS[job](FlashT5Config(**shape, scale_decoder_outputs=False))


def job_collator(job: str, packed: bool, padded_to_maximum: bool):
    """Packed rows of PACKED_ROWS tokens, rows padded to the job's maximum lengths (one shape: the best an upstream
    user can compile), or rows padded to the longest in the batch."""
    if packed:
        max_length, decoder_max_length = PACKED_ROWS[job]
        return fat5.DataCollatorWithPacking(max_length, decoder_max_length, pad_token_id=PAD)
    if padded_to_maximum:
        _, (_, high), targets = JOBS[job]
        return PaddingCollator(length=high, label_length=targets[1] if targets else None)
    return PaddingCollator()


def run_variant(job: str, variant: str, args) -> dict:
    upstream, *options = variant.split("_")
    upstream = upstream == "upstream"
    cuda_graphs = "cudagraphs" in options
    compiled = "compiled" in options or cuda_graphs
    model = build_model(job, upstream, args.dropout, args.device)
    if "kernelized" in options:
        fat5.kernelize(model)
    collator = job_collator(job, packed="packed" in options, padded_to_maximum=upstream and compiled)
    steps = args.warmup_steps + args.steps
    # The timed steps repeat the warm-up's batches, in order (sequential sampling): every batch shape is compiled,
    # and every CUDA graph recorded, before the timing starts. Throughput does not depend on the token values.
    warmup_examples = synthetic_examples(job, args.warmup_steps * BATCH_SIZE)
    examples = warmup_examples + [
        warmup_examples[index % len(warmup_examples)] for index in range(args.steps * BATCH_SIZE)
    ]
    callback = ThroughputCallback(args.warmup_steps, profile=args.profile)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=BATCH_SIZE,
            max_steps=steps,
            learning_rate=1e-4,
            bf16=True,
            torch_compile=compiled,
            # CUDA graphs replay each step's kernels without their launches (one graph per batch shape).
            torch_compile_mode="reduce-overhead" if cuda_graphs else None,
            logging_steps=5,
            # Trainer's default checks every step's loss for NaN on the host: a GPU synchronisation a step that keeps
            # the host from queueing the next step while the GPU works. Off for every variant alike (the README's
            # recipe keeps Trainer's default: the setting is not measured on its own yet).
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=2,
            remove_unused_columns=False,
            seed=0,
            train_sampling_strategy="sequential",
            use_cpu=args.device == "cpu",
        )
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = (DynamicBatchTrainer if "dynamicbatch" in options else Trainer)(
            model=model,
            args=training_args,
            train_dataset=examples,
            data_collator=collator,
            callbacks=[callback],
        )
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "job": job,
        "variant": variant,
        "attn_implementation": model.config._attn_implementation,
        "samples_per_second": callback.timed_steps * BATCH_SIZE / callback.elapsed,
        "warmup_seconds": callback.warmup_seconds,
        "slowest_timed_step_seconds": callback.slowest_timed_step(),
        "mean_timed_step_seconds": callback.elapsed / callback.timed_steps,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else 0.0,
        # None when the run was shorter than the logging interval: its speed still counts.
        "final_loss": sum(losses[-2:]) / len(losses[-2:]) if losses else None,
        "losses": losses,
        "steps": steps,
        "warmup_steps": args.warmup_steps,
    }
    if args.profile:
        result["profile"] = callback.profile_summary()
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def use_smoke_shapes():
    """Tiny models and sequences, for a run of the script on the CPU."""
    for name, shape in (("qa", QA_SHAPE), ("seq2seq", MT5_SMALL_SHAPE)):
        shape.update(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        _, _, targets = JOBS[name]
        JOBS[name] = (shape, (10, 40), (3, 8) if targets else None)
        PACKED_ROWS[name] = (64, 16 if targets else None)


VARIANTS = (
    "upstream", "upstream_compiled", "fat5", "fat5_compiled", "fat5_packed", "fat5_packed_compiled",
    "fat5_packed_compiled_kernelized", "fat5_kernelized", "upstream_cudagraphs", "fat5_packed_cudagraphs",
)  # fmt: skip


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number of steps")
    return int(text)


def variant_name(name: str) -> str:
    base, *options = name.split("_")
    allowed = {"compiled", "cudagraphs"}
    if base == "fat5":
        allowed |= {"packed", "kernelized", "dynamicbatch"}
    if base not in ("upstream", "fat5") or not set(options) <= allowed or len(set(options)) != len(options):
        raise argparse.ArgumentTypeError(
            f"{name!r}: 'upstream' or 'fat5', then any of _packed, _compiled, _cudagraphs, _kernelized, _dynamicbatch "
            "(upstream: _compiled or _cudagraphs)"
        )
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), type=variant_name)
    parser.add_argument("--warmup-steps", type=positive_int, default=15)
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--out", default="results_finetune.json")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the timed steps (GPU kernel time against wall time, top kernels and host operations): the "
        "profiler's own cost slows the host, so measure speed without it",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script")
    args = parser.parse_args()
    args.device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        use_smoke_shapes()
    environment = {
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "triton": __import__("triton").__version__,
        "fat5": fat5.__version__,
    }
    results = []
    for job in args.jobs:
        for variant in args.variants:
            if "kernelized" in variant and job != "seq2seq":
                continue  # the fused LM loss serves the LM head only
            try:
                result = run_variant(job, variant, args)
            except Exception as error:  # one failing variant must not lose the others' numbers
                result = {"job": job, "variant": variant, "error": f"{type(error).__name__}: {error}"[:2000]}
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                torch._dynamo.reset()
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
            # Written after every variant: a run stopped at its time limit keeps what it measured.
            with open(args.out, "w") as file:
                json.dump({"environment": environment, "args": vars(args), "results": results}, file, indent=1)
    for job in args.jobs:
        rows = {r["variant"]: r for r in results if r["job"] == job and "error" not in r}
        base = rows.get("upstream", {}).get("samples_per_second")
        for variant, row in rows.items():
            ratio = f"{row['samples_per_second'] / base:.2f}x" if base else "-"
            print(
                f"{job:8s} {variant:18s} {row['samples_per_second']:8.1f} samples/s {ratio:>7s} "
                f"{row['peak_memory_gb']:6.1f} GB  warm-up {row['warmup_seconds']:6.1f} s  slowest timed step "
                f"{row['slowest_timed_step_seconds']:6.3f} s  loss "
                + ("-" if row["final_loss"] is None else f"{row['final_loss']:.3f}")
            )


if __name__ == "__main__":
    main()
