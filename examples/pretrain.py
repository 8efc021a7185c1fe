"""Build and briefly pretrain a small FAT5 seq2seq checkpoint from the corpus shipped in `examples/data/`.

Nothing is downloaded: a BPE tokenizer (T5-style: `<pad>`=0, `</s>`=1, `<unk>`=2, sentinels `<extra_id_N>`) is
trained on the corpus on the spot with `tokenizers`, and a `FlashT5ForConditionalGeneration` is pretrained with T5's
span-corruption objective for a few hundred steps with `Trainer`. The result (model + tokenizer) is an ordinary
`save_pretrained` folder, cached under `examples/.cache/` (git-ignored) and keyed by the settings and the corpus, so
that later runs reuse it.

    python examples/pretrain.py                       # build (or reuse) the default checkpoint, print its path
    python examples/pretrain.py --steps 50 --output-dir /tmp/fat5-tiny --size tiny
"""

import argparse
import hashlib
import json
import math
import random
import shutil
import string
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments

import fat5


EXAMPLES_DIR = Path(__file__).resolve().parent
DEFAULT_CORPUS = EXAMPLES_DIR / "data" / "corpus.txt"
CACHE_DIR = EXAMPLES_DIR / ".cache"
NUM_SENTINELS = 32

# Model sizes: "small" is the demo's checkpoint (a few minutes of CPU pretraining), "tiny" is for tests.
SIZES = {
    "small": {
        "hidden_size": 128,
        "d_kv": 32,
        "num_heads": 4,
        "intermediate_size": 256,
        "num_layers": 3,
        "num_decoder_layers": 2,
    },
    "tiny": {
        "hidden_size": 32,
        "d_kv": 8,
        "num_heads": 4,
        "intermediate_size": 64,
        "num_layers": 2,
        "num_decoder_layers": 1,
    },
}


def read_corpus(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"corpus file {path} has no text")
    return lines


def train_tokenizer(lines: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A T5-style BPE tokenizer trained on `lines`: every sequence ends with `</s>`, pairs read `A </s> B </s>`."""
    sentinels = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS)]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.NFKC()
    # Punctuation is its own token, so that answer spans never end in the middle of one ("Paris." -> "Paris", ".").
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>", *sentinels],
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer=trainer)
    eos = backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=sentinels,
        model_max_length=512,
    )


def span_corruption(token_ids: list[int], sentinel_ids: list[int], eos_id: int, rng, noise=0.15, mean_span=3.0):
    """T5's objective: drop random spans, replace each by a sentinel; the target lists the sentinels and the spans."""
    n = len(token_ids)
    num_noise = max(1, round(n * noise))
    num_spans = max(1, min(len(sentinel_ids), round(num_noise / mean_span)))
    starts = sorted(rng.sample(range(n), k=min(num_spans, n)))
    inputs, targets, pos = [], [], 0
    for i, start in enumerate(starts):
        if start < pos:
            continue
        end = min(n, start + max(1, round(rng.expovariate(1 / mean_span))))
        inputs += token_ids[pos:start] + [sentinel_ids[i]]
        targets += [sentinel_ids[i]] + token_ids[start:end]
        pos = end
    inputs += token_ids[pos:] + [eos_id]
    targets += [eos_id]
    return inputs, targets


class SpanCorruptionDataset(torch.utils.data.Dataset):
    """Paragraphs re-corrupted at every access (a fresh noise pattern each epoch), seeded for reproducibility."""

    def __init__(self, tokenizer, lines, max_length=128, seed=0):
        self.examples = [ids[: max_length - 1] for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]]
        self.sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(NUM_SENTINELS)])
        self.eos_id = tokenizer.eos_token_id
        self.seed = seed
        self.calls = 0

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        self.calls += 1
        rng = random.Random(self.seed * 1_000_003 + index * 7919 + self.calls)
        inputs, targets = span_corruption(self.examples[index], self.sentinel_ids, self.eos_id, rng)
        return {"input_ids": inputs, "labels": targets}


def pad_batch(features, pad_id):
    """Right-pads `input_ids` (with an attention mask) and `labels` (with -100)."""
    batch = {}
    for key, fill in (("input_ids", pad_id), ("labels", -100)):
        width = max(len(f[key]) for f in features)
        batch[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
    batch["attention_mask"] = (batch["input_ids"] != pad_id).long()
    batch["attention_mask"][:, 0] = 1
    return batch


def build_config(tokenizer, size="small", **overrides) -> fat5.FlashT5Config:
    return fat5.FlashT5Config(
        vocab_size=len(tokenizer),
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **{**SIZES[size], **overrides},
    )


def pretrain(
    output_dir,
    corpus=DEFAULT_CORPUS,
    size="small",
    steps=400,
    batch_size=32,
    learning_rate=3e-3,
    max_length=128,
    seed=0,
    quiet=False,
) -> Path:
    """Train the tokenizer and pretrain a model; the folder appears at `output_dir` only once complete."""
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    lines = read_corpus(corpus)
    tokenizer = train_tokenizer(lines)
    model = fat5.FlashT5ForConditionalGeneration(build_config(tokenizer, size))
    with torch.no_grad():  # T5's untied LM head starts at std 1.0: first logits ~sqrt(d_model) too large
        model.lm_head.weight.normal_(mean=0.0, std=model.config.hidden_size**-0.5)
    if not quiet:
        print(
            f"pretraining a {model.num_parameters() / 1e6:.1f}M-parameter FAT5 ({size}) for {steps} steps of span "
            f"corruption on {len(lines)} paragraphs of {corpus}"
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.tmp-"))
    try:
        args = TrainingArguments(
            output_dir=str(workdir / "trainer"),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=max(1, steps // 20),
            weight_decay=0.0,
            logging_steps=max(1, steps // 8),
            save_strategy="no",
            report_to="none",
            seed=seed,
            disable_tqdm=quiet,
            dataloader_num_workers=0,
        )
        dataset = SpanCorruptionDataset(tokenizer, lines, max_length=max_length, seed=seed)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=lambda features: pad_batch(features, tokenizer.pad_token_id),
        )
        result = trainer.train()
        if trainer.is_world_process_zero():
            final = workdir / "model"
            model.save_pretrained(final)
            tokenizer.save_pretrained(final)
            if output_dir.exists():
                shutil.rmtree(output_dir)
            final.rename(output_dir)
            if not quiet:
                print(f"pretraining loss {result.training_loss:.3f} (ln(vocab) = {math.log(len(tokenizer)):.2f})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return output_dir


def cached_checkpoint(corpus=DEFAULT_CORPUS, size="small", steps=400, seed=0, cache_dir=CACHE_DIR, quiet=False):
    """The pretrained checkpoint for these settings: reused from `cache_dir` when there, else built there."""
    key = json.dumps({"size": size, "steps": steps, "seed": seed, "version": 2, "sizes": SIZES[size]}, sort_keys=True)
    digest = hashlib.sha256(key.encode() + Path(corpus).read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir) / f"fat5-{size}-span-corruption-{steps}steps-{digest}"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        if not quiet:
            print(f"reusing the pretrained checkpoint {folder}")
        return folder
    return pretrain(folder, corpus=corpus, size=size, steps=steps, seed=seed, quiet=quiet)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="text file, one paragraph a line")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model size (default: small)")
    parser.add_argument("--steps", type=int, default=400, help="pretraining steps (default: 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", help="where to write the checkpoint (default: a cached folder under examples/.cache/)"
    )
    args = parser.parse_args(argv)
    try:
        if args.output_dir:
            folder = pretrain(args.output_dir, corpus=args.corpus, size=args.size, steps=args.steps, seed=args.seed)
        else:
            folder = cached_checkpoint(corpus=args.corpus, size=args.size, steps=args.steps, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
