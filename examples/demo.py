"""The main job, end to end on the CPU (`make demo`): pretrain, finetune extractive QA with `Trainer`, save, reload.

1. A small FAT5 seq2seq checkpoint (`FlashT5ForConditionalGeneration` + a BPE tokenizer) is built and briefly
   pretrained with span corruption on `examples/data/corpus.txt` by `pretrain.py`; it is cached under
   `examples/.cache/`, so a second run reuses it.
2. `finetune.py` loads `FlashT5ForQuestionAnswering.from_pretrained(checkpoint)` (its encoder, a fresh span head),
   evaluates exact match and F1 on the held-out questions, finetunes with `Trainer`, evaluates again,
   `save_pretrained`s the model and tokenizer, and reloads them in a fresh process through
   `AutoModelForQuestionAnswering`: the predictions must be identical.
3. A summary table; the run fails (non-zero exit) if finetuning did not beat the untrained head.

    python examples/demo.py                                  # the defaults below
    python examples/demo.py --max-steps 1000 --output-dir runs/qa
    python examples/demo.py -- --train-file my_train.jsonl --eval-file my_eval.jsonl   # more finetune.py flags

Other data, other heads, several GPUs: `python examples/finetune.py --help`.
"""

import argparse
import sys
import time
from pathlib import Path

import finetune
import pretrain


PRETRAIN_STEPS = 300
FINETUNE_STEPS = 400
LEARNING_RATE = 2e-3


def build_parser():
    parser = argparse.ArgumentParser(
        prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=PRETRAIN_STEPS, help=f"default: {PRETRAIN_STEPS} (cached)"
    )
    parser.add_argument("--max-steps", type=int, default=FINETUNE_STEPS, help=f"finetuning steps ({FINETUNE_STEPS})")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE, help=f"default: {LEARNING_RATE}")
    parser.add_argument("--output-dir", default="demo_output/qa", help="default: demo_output/qa (replaced)")
    parser.add_argument("finetune_args", nargs="*", help="more finetune.py flags, after `--`")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    print("== 1/3 pretrained checkpoint", flush=True)
    checkpoint = pretrain.cached_checkpoint(steps=args.pretrain_steps)
    pretrain_s = time.perf_counter() - started

    print("\n== 2/3 finetuning FlashT5ForQuestionAnswering with Trainer", flush=True)
    argv = ["--head", "qa", "--model", str(checkpoint), "--output-dir", args.output_dir, "--overwrite"]
    argv += ["--max-steps", str(args.max_steps), "--learning-rate", str(args.learning_rate)]
    # The packed path, on the CPU too: rows of 256 tokens (on the CPU the pure-PyTorch attention computes every pair
    # of a row; the GPU kernels skip other examples' tiles, and finetune.py packs rows of 1024 there).
    argv += ["--pack", "--pack-length", "256", *args.finetune_args]
    finetune_args = finetune.build_parser().parse_args(argv)
    try:
        results = finetune.run(finetune_args)
    except finetune.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except finetune.ReloadCheckFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    before, after, reload = results["before"], results["after"], results.get("reload")
    total_s = time.perf_counter() - started
    print("\n== 3/3 summary")
    rows = [
        ("checkpoint", str(checkpoint)),
        ("pretraining (or cache)", f"{pretrain_s:.0f} s"),
        ("data", f"{results['train_examples']} training / {results['eval_examples']} held-out questions"),
        ("finetuning", f"{args.max_steps} steps, {results['timings']['train_s']:.0f} s on {results['device']}"),
        (
            "training speed",
            f"{results['train_samples_per_second']:.1f} samples/s, "
            f"{'packed rows' if results['packed'] else 'padded batches'}"
            f"{', compiled' if results['compiled'] else ''}",
        ),
        ("exact match", f"{before['exact_match']:5.1f} -> {after['exact_match']:5.1f}"),
        ("F1", f"{before['f1']:5.1f} -> {after['f1']:5.1f}"),
        ("saved", f"{Path(args.output_dir) / 'model'}: {', '.join(results['saved_files'])}"),
    ]
    if reload:
        rows.append(
            (
                "fresh-process reload",
                f"{reload['reloaded_class']} via AutoModelForQuestionAnswering: same predictions on "
                f"{reload['examples']} examples (max |diff| {reload['max_abs_diff']:.1e})",
            )
        )
    rows.append(("total", f"{total_s:.0f} s"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if not (after["f1"] > before["f1"] and after["exact_match"] > before["exact_match"]):
        print("error: the finetuned model does not beat the untrained head", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
