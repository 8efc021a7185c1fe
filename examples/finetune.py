"""Finetune a FAT5 checkpoint with transformers' `Trainer`: extractive QA, sequence or token classification, seq2seq.

The flow, for every head: load the datasets (JSON lines) and check them, load the head from a FAT5 checkpoint (a
seq2seq checkpoint gives its encoder to the encoder-only heads, which start with a fresh head), evaluate it, train it,
evaluate it again, `save_pretrained` the model and its tokenizer, reload that folder in a fresh Python process
through the head's Auto class and check that its predictions are the same. Outputs are written to a temporary folder
next to `--output-dir` and moved into place at the very end: a failed or interrupted run (Ctrl-C, SIGTERM) leaves
nothing behind, and `--overwrite` removes the previous run only once the new one is in place. A trained model is never
thrown away: if the reloaded model does not predict what the trained one does, the run is kept, the difference is
printed and recorded in results.json, and the exit status is 1.

    python examples/finetune.py --head qa --model CHECKPOINT --output-dir runs/qa
    python examples/finetune.py --head seq-cls --model CHECKPOINT --train-file examples/data/topics_train.jsonl \\
        --eval-file examples/data/topics_eval.jsonl --output-dir runs/topics

Datasets (JSON lines, one example a line):
    qa         context, question, answers = {"text": [...], "answer_start": [...]}   (SQuAD)
    seq-cls    text, label                                                             (label: a string or an int)
    token-cls  tokens (list of words), tags (list of labels, one per word)
    seq2seq    source, target   -- or the QA columns: "question: ... context: ..." -> the first answer

The output folder holds `model/` (config.json, model.safetensors, generation_config.json for seq2seq, the tokenizer:
everything `from_pretrained` and `push_to_hub` need, nothing else) and `results.json` (metrics before and after).

Several GPUs: the same script under `accelerate launch`, with the configs of `examples/accelerate/` (DDP, or FSDP
with one shard unit per FlashT5Block; both bf16):

    accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 8 examples/finetune.py \\
        --head qa --model CHECKPOINT --output-dir runs/qa --batch-size 32
    accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 8 examples/finetune.py ...

(the batch size is per process). On a GPU the model uses FAT5's Triton attention ("fat5") by default.

On a GPU, training is fast by default, the recipe of the README: the training batches are packed
(`fat5.DataCollatorWithPacking`: the examples of a batch in rows of `--pack-length` tokens, no padding computed, one
shape) and the model is compiled (`TrainingArguments(torch_compile=True)`). `--no-pack` pads each batch to its longest
example instead, `--no-compile` trains uncompiled, and `--cuda-graphs` replays each compiled step from CUDA graphs
(`torch_compile_mode="reduce-overhead"`; see benchmarks/README.md for what CUDA graphs do to training speed). On the
CPU batches are padded unless `--pack` is given: there the pure-PyTorch attention computes every (query, key) pair of
a row, where the GPU kernels skip other examples' tiles (packed rows of 1024 tokens trained QA 5x slower than padded
batches on the CPU). Evaluation always runs on padded batches, one example a row.
"""

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as transformers_logging

import fat5  # registers flash_t5 with the Auto classes


EXAMPLES_DIR = Path(__file__).resolve().parent
DATA_DIR = EXAMPLES_DIR / "data"
AUTO_CLASSES = {
    "qa": AutoModelForQuestionAnswering,
    "seq-cls": AutoModelForSequenceClassification,
    "token-cls": AutoModelForTokenClassification,
    "seq2seq": AutoModelForSeq2SeqLM,
}
DEFAULT_FILES = {
    "qa": ("qa_train.jsonl", "qa_eval.jsonl"),
    "seq-cls": ("topics_train.jsonl", "topics_eval.jsonl"),
    "token-cls": ("entities_train.jsonl", "entities_eval.jsonl"),
    "seq2seq": ("qa_train.jsonl", "qa_eval.jsonl"),
}
MAIN_METRIC = {"qa": "f1", "seq-cls": "accuracy", "token-cls": "f1", "seq2seq": "f1"}


class UsageError(Exception):
    """A problem with the user's input: reported as one clear message and a non-zero exit."""


class ReloadCheckFailed(Exception):
    """The saved model, reloaded in a fresh process, does not give the trained model's outputs. Raised once the run
    is in place: the trained model is kept."""


# ----------------------------------------------------------------------------------------------------------- data


def load_jsonl(path, head: str, limit: int | None = None) -> list[dict]:
    """Reads and checks a dataset for `head`; every problem names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"dataset {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{number}: not a JSON object")
            rows.append(check_example(row, head, f"{path}:{number}"))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise UsageError(f"dataset {path} is empty: it has no examples")
    return rows


def _require(row, where, **types):
    missing = [name for name in types if name not in row]
    if missing:
        raise UsageError(
            f"{where}: missing column(s) {missing}; this head needs {sorted(types)} (found {sorted(row)})"
        )
    for name, kind in types.items():
        if not isinstance(row[name], kind):
            raise UsageError(f"{where}: column {name!r} should be {kind}, not {type(row[name]).__name__}")


def check_example(row: dict, head: str, where: str) -> dict:
    if head == "qa" or (head == "seq2seq" and "source" not in row):
        _require(row, where, context=str, question=str, answers=dict)
        answers = row["answers"]
        _require(answers, f"{where} (answers)", text=list, answer_start=list)
        if not answers["text"] or len(answers["text"]) != len(answers["answer_start"]):
            raise UsageError(f"{where}: `answers` needs as many `text` as `answer_start` entries, and at least one")
        for text, start in zip(answers["text"], answers["answer_start"]):
            if not isinstance(start, int) or not text or row["context"][start : start + len(text)] != text:
                raise UsageError(
                    f"{where}: the answer {text!r} does not lie in its context at answer_start={start!r} "
                    f"(the context there reads {row['context'][start : start + len(text)]!r})"
                )
        if head == "seq2seq":
            row = {"source": f"question: {row['question']} context: {row['context']}", "target": answers["text"][0]}
    elif head == "seq2seq":
        _require(row, where, source=str, target=str)
    elif head == "seq-cls":
        _require(row, where, text=str, label=(str, int))
    elif head == "token-cls":
        _require(row, where, tokens=list, tags=list)
        if len(row["tokens"]) != len(row["tags"]) or not row["tokens"]:
            raise UsageError(f"{where}: `tokens` and `tags` must be non-empty lists of the same length")
    return row


# ---------------------------------------------------------------------------------------------------- features


def qa_features(tokenizer, rows, max_length):
    """Question then context; span labels are token positions (`max_length` = ignored when truncated away)."""
    enc = tokenizer(
        [r["question"] for r in rows],
        [r["context"] for r in rows],
        truncation="only_second",
        max_length=max_length,
        return_offsets_mapping=True,
    )
    features, extras = [], []
    for i, row in enumerate(rows):
        sequence_ids = enc.sequence_ids(i)
        offsets = [o if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence_ids)]
        answer_start = row["answers"]["answer_start"][0]
        answer_end = answer_start + len(row["answers"]["text"][0])
        start = next((t for t, o in enumerate(offsets) if o and o[0] <= answer_start < o[1]), None)
        end = next((t for t, o in enumerate(offsets) if o and o[0] < answer_end <= o[1]), None)
        if start is None or end is None:
            start = end = max_length
        features.append(
            {
                "input_ids": enc["input_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "start_positions": start,
                "end_positions": end,
            }
        )
        extras.append({"offsets": offsets, "context": row["context"], "answers": row["answers"]["text"]})
    return features, extras


def seq_cls_features(tokenizer, rows, max_length, label2id):
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label2id[str(r["label"])]}
        for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows)
    ]


def token_cls_features(tokenizer, rows, max_length, label2id):
    """Each word's label on its first sub-word; other sub-words and special tokens are ignored (-100)."""
    enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=max_length)
    features = []
    for i, row in enumerate(rows):
        labels, previous = [], None
        for word in enc.word_ids(i):
            labels.append(-100 if word is None or word == previous else label2id[row["tags"][word]])
            previous = word
        features.append(
            {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels}
        )
    return features


def seq2seq_features(tokenizer, rows, max_length, max_target_length):
    enc = tokenizer([r["source"] for r in rows], truncation=True, max_length=max_length)
    targets = tokenizer(text_target=[r["target"] for r in rows], truncation=True, max_length=max_target_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for ids, mask, labels in zip(enc["input_ids"], enc["attention_mask"], targets["input_ids"])
    ]


# ----------------------------------------------------------------------------------------------------- metrics


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    exact, f1 = 0.0, 0.0
    for prediction, answers in zip(predictions, references):
        exact += max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)
        best = 0.0
        for answer in answers:
            pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(answer).split()
            common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
            if common:
                precision, recall = common / len(pred_tokens), common / len(gold_tokens)
                best = max(best, 2 * precision * recall / (precision + recall))
        f1 += best
    n = max(1, len(predictions))
    return {"exact_match": 100 * exact / n, "f1": 100 * f1 / n}


def bio_spans(tags: list[str]) -> set:
    spans, start, label = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and not (tag.startswith("I-") and tag[2:] == label):
            spans.add((start, i, label))
            start = None
        if tag.startswith("B-") or (tag.startswith("I-") and start is None):
            start, label = i, tag[2:]
    return spans


def best_span(start_logits, end_logits, offsets, max_answer_tokens=30):
    """The context span maximising start + end logits (start <= end, at most `max_answer_tokens` tokens)."""
    candidates = [t for t, o in enumerate(offsets) if o is not None and t < len(start_logits)]
    if not candidates:
        return None
    allowed = torch.tensor([o is not None for o in offsets[: len(start_logits)]])
    start_logits = start_logits[: len(allowed)].masked_fill(~allowed, -1e9)
    end_logits = end_logits[: len(allowed)].masked_fill(~allowed, -1e9)
    scores = start_logits[:, None] + end_logits[None, :]
    n = len(allowed)
    band = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer_tokens - 1)
    flat = scores.masked_fill(~band, -1e18).argmax()
    return divmod(flat.item(), n)


# ------------------------------------------------------------------------------------------------------- tasks


class Task:
    """Everything head-specific: features, collator, and turning raw outputs into predictions and metrics."""

    def __init__(self, head, tokenizer, train_rows, eval_rows, args):
        self.head, self.tokenizer, self.args = head, tokenizer, args
        self.label2id = None
        if head in ("seq-cls", "token-cls"):
            train_labels = sorted(
                {str(r["label"]) for r in train_rows}
                if head == "seq-cls"
                else {t for r in train_rows for t in r["tags"]}
            )
            eval_labels = (
                {str(r["label"]) for r in eval_rows}
                if head == "seq-cls"
                else {t for r in eval_rows for t in r["tags"]}
            )
            unknown = sorted(eval_labels - set(train_labels))
            if unknown:
                raise UsageError(f"the evaluation data has labels that the training data lacks: {unknown}")
            self.label2id = {label: i for i, label in enumerate(train_labels)}
        self.train_features, _ = self.featurize(train_rows)
        self.eval_features, self.eval_extras = self.featurize(eval_rows)
        self.eval_rows = eval_rows

    def featurize(self, rows):
        t, n = self.tokenizer, self.args.max_length
        if self.head == "qa":
            return qa_features(t, rows, n)
        if self.head == "seq-cls":
            return seq_cls_features(t, rows, n, self.label2id), None
        if self.head == "token-cls":
            return token_cls_features(t, rows, n, self.label2id), None
        return seq2seq_features(t, rows, n, self.args.max_target_length), None

    def model_kwargs(self):
        if self.label2id is None:
            return {}
        return {
            "num_labels": len(self.label2id),
            "label2id": self.label2id,
            "id2label": {i: label for label, i in self.label2id.items()},
        }

    def training_collator(self, model=None):
        """The collator of the training batches: packed rows unless `--no-pack`."""
        if not self.args.pack:
            return self.collator(model)
        length = self.args.pack_length or 4 * self.args.max_length
        target_length = self.args.pack_target_length or 4 * self.args.max_target_length
        return fat5.DataCollatorWithPacking(
            length, target_length if self.head == "seq2seq" else None, pad_token_id=self.tokenizer.pad_token_id
        )

    def collator(self, model=None):
        """The collator of the evaluation batches, one example a row, padded to the longest."""
        if self.head == "token-cls":
            return DataCollatorForTokenClassification(self.tokenizer)
        if self.head == "seq2seq":
            return DataCollatorForSeq2Seq(self.tokenizer, model=model)
        return DataCollatorWithPadding(self.tokenizer)

    def decode(self, outputs) -> list:
        """Raw outputs (a list, one tensor or tensor pair per example) -> predictions (strings or labels)."""
        if self.head == "qa":
            predictions = []
            for (start_logits, end_logits), extra in zip(outputs, self.eval_extras):
                span = best_span(start_logits, end_logits, extra["offsets"])
                if span is None:
                    predictions.append("")
                else:
                    s, e = span
                    predictions.append(extra["context"][extra["offsets"][s][0] : extra["offsets"][e][1]].strip())
            return predictions
        if self.head == "seq-cls":
            id2label = {i: label for label, i in self.label2id.items()}
            return [id2label[int(logits.argmax())] for logits in outputs]
        if self.head == "token-cls":
            id2label = {i: label for label, i in self.label2id.items()}
            predictions = []
            for logits, feature in zip(outputs, self.eval_features):
                keep = [i for i, label in enumerate(feature["labels"]) if label != -100]
                predictions.append([id2label[int(logits[i].argmax())] for i in keep])
            return predictions
        return self.tokenizer.batch_decode(outputs, skip_special_tokens=True)

    def score(self, predictions) -> dict:
        if self.head in ("qa", "seq2seq"):
            if self.head == "qa":
                references = [extra["answers"] for extra in self.eval_extras]
            else:
                references = [[r["target"]] for r in self.eval_rows]
            return squad_scores([p.strip() for p in predictions], references)
        if self.head == "seq-cls":
            correct = sum(p == str(r["label"]) for p, r in zip(predictions, self.eval_rows))
            return {"accuracy": 100 * correct / len(predictions)}
        gold = [r["tags"][: len(p)] for p, r in zip(predictions, self.eval_rows)]
        tp = sum(len(bio_spans(p) & bio_spans(g)) for p, g in zip(predictions, gold))
        n_pred, n_gold = sum(len(bio_spans(p)) for p in predictions), sum(len(bio_spans(g)) for g in gold)
        precision, recall = tp / max(1, n_pred), tp / max(1, n_gold)
        f1 = 2 * precision * recall / max(1e-9, precision + recall)
        words = sum(len(p) for p in predictions)
        accuracy = sum(a == b for p, g in zip(predictions, gold) for a, b in zip(p, g)) / max(1, words)
        return {"f1": 100 * f1, "accuracy": 100 * accuracy}


def split_outputs(head, predictions) -> list:
    """Trainer's padded prediction arrays -> one tensor (or pair) per example, padding (-100) removed."""
    if head == "qa":
        starts, ends = (torch.as_tensor(p) for p in predictions)
        return list(zip(starts, ends))
    if head == "seq2seq":
        ids = torch.as_tensor(predictions)
        return [row[row != -100] for row in ids]
    return list(torch.as_tensor(predictions[0] if isinstance(predictions, tuple) else predictions))


# -------------------------------------------------------------------------------------------- model & outputs


def check_path_exists(path, what: str):
    """A `--model` or `--tokenizer` that is no folder here and cannot be a hub id is a path that does not exist: say
    so, rather than what the first loader (the tokenizer's) makes of it."""
    if Path(path).exists():
        return
    try:
        validate_repo_id(str(path))
    except HFValidationError:
        raise UsageError(f"the {what} path {path} does not exist") from None


def missing_path_error(path, error) -> UsageError:
    """`path` is no folder here, and loading it as a hub id failed with `error`."""
    reason = str(error).splitlines()[0]
    return UsageError(f"{path} does not exist here, nor could it be loaded from the Hub ({reason})")


def load_model(head, path, task_kwargs):
    """The head from a FAT5 checkpoint folder (or hub id); a clear UsageError for anything else."""
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        if not Path(path).exists():
            raise missing_path_error(path, e) from None
        raise UsageError(f"{path} is not a loadable model checkpoint: {str(e).splitlines()[0]}") from None
    if config.model_type != "flash_t5":
        raise UsageError(
            f"{path} holds a {config.model_type!r} model, not a FAT5 ('flash_t5') one; convert T5 checkpoints first "
            "with `python -m fat5.models.flash_t5.convert_t5_to_flash_t5`"
        )
    try:
        return AUTO_CLASSES[head].from_pretrained(path, **task_kwargs)
    except Exception as e:
        raise UsageError(f"could not load a {head} model from {path}: {str(e).splitlines()[0]}") from None


def load_tokenizer(path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        if not Path(path).exists():
            raise missing_path_error(path, e) from None
        raise UsageError(
            f"no tokenizer could be loaded from {path} ({str(e).splitlines()[0]}); pass --tokenizer"
        ) from None
    if not tokenizer.is_fast:
        raise UsageError(f"the tokenizer of {path} is not a fast tokenizer (offsets and word ids need one)")
    return tokenizer


@contextlib.contextmanager
def ieee_float32_matmuls():
    """fp32 matrix products in full fp32 within the block. `TrainingArguments(torch_compile=True)` turns TF32 on for the
    whole process, and a fresh process computes without it: TF32's 10-bit mantissa alone set the reload check's two
    sides 1e-3 apart on a GPU."""
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 names the precision; older versions have the legacy flag only.
    setting, full_fp32 = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    previous = getattr(matmul, setting)
    setattr(matmul, setting, full_fp32)
    try:
        yield
    finally:
        setattr(matmul, setting, previous)


@torch.no_grad()
@ieee_float32_matmuls()
def raw_outputs(head, model, features, collator, batch_size=32, generation_kwargs=None) -> list:
    """The model's outputs on `features`, one per example, by a plain loop in full fp32 products (same code in both
    processes)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for i in range(0, len(features), batch_size):
        chunk = [
            {k: v for k, v in f.items() if k in ("input_ids", "attention_mask")} for f in features[i : i + batch_size]
        ]
        batch = {k: v.to(device) for k, v in collator(chunk).items()}
        if head == "seq2seq":
            generated = model.generate(**batch, **(generation_kwargs or {}))
            outputs += [row.cpu() for row in generated]
        elif head == "qa":
            out = model(**batch)
            lengths = batch["attention_mask"].sum(1)
            outputs += [(s[:n].cpu(), e[:n].cpu()) for s, e, n in zip(out.start_logits, out.end_logits, lengths)]
        elif head == "token-cls":
            out = model(**batch)
            lengths = batch["attention_mask"].sum(1)
            outputs += [logits[:n].cpu() for logits, n in zip(out.logits, lengths)]
        else:
            outputs += list(model(**batch).logits.cpu())
    return outputs


RELOAD_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import finetune
head, folder, work, device = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
saved = torch.load(work + "/reload_inputs.pt", weights_only=False)
model = finetune.AUTO_CLASSES[head].from_pretrained(folder).to(device)
tokenizer = finetune.AutoTokenizer.from_pretrained(folder)
collator = finetune.DataCollatorWithPadding(tokenizer)
outputs = finetune.raw_outputs(head, model, saved["features"], collator, generation_kwargs=saved["generation"])
torch.save({"outputs": outputs, "class": type(model).__name__}, work + "/reload_outputs.pt")
"""


def compare_outputs(a, b) -> float:
    """Largest absolute difference between two lists of outputs; inf where shapes differ."""
    worst = 0.0
    for x, y in zip(a, b):
        for u, v in zip(x, y) if isinstance(x, tuple) else [(x, y)]:
            if u.shape != v.shape:
                return float("inf")
            worst = max(worst, (u.double() - v.double()).abs().max().item() if u.numel() else 0.0)
    return worst if len(a) == len(b) else float("inf")


def reload_tolerance(head, dtype: torch.dtype, outputs) -> float:
    """How far the reloaded model's outputs may lie from the trained one's. Both processes run the same computation on
    the same batches, so only the order of a sum may set them apart: generated tokens must be equal, and logits may
    differ by ten times the decimal resolution of the dtype the model computes in (fp32 1e-5, fp16 1e-2, bf16 1e-1),
    relative to the largest logit."""
    if head == "seq2seq":
        return 0.0
    tensors = [t for output in outputs for t in (output if isinstance(output, tuple) else (output,)) if t.numel()]
    largest = max((t.abs().max().item() for t in tensors), default=0.0)
    return 10 * torch.finfo(dtype).resolution * max(1.0, largest)


def check_reload(head, model, folder, task, workdir, generation_kwargs) -> dict:
    """Reloads `folder` in a fresh process through the Auto class of `head` and compares its outputs with `model`'s:
    the predictions, and the logits up to the rounding of the model's dtype. The verdict is `passed` in the result.
    A check that cannot run (the fresh process fails, say) fails with its error under `error`."""
    try:
        return compare_with_fresh_process(head, model, folder, task, workdir, generation_kwargs)
    except Exception:  # a broken check must not cost the trained run: the caller keeps it and reports this
        return {"error": traceback.format_exc()[-3000:], "passed": False}


def compare_with_fresh_process(head, model, folder, task, workdir, generation_kwargs) -> dict:
    collator = DataCollatorWithPadding(task.tokenizer)
    features = task.eval_features[: task.args.reload_check_examples]
    here = raw_outputs(head, model, features, collator, generation_kwargs=generation_kwargs)
    torch.save({"features": features, "generation": generation_kwargs}, Path(workdir) / "reload_inputs.pt")
    # On the trained model's device: the same kernels then compute both outputs.
    device = str(next(model.parameters()).device)
    reload = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(EXAMPLES_DIR), head, str(folder), str(workdir), device],
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            **({"TRANSFORMERS_VERBOSITY": "error"} if task.args.quiet else {}),
        },
    )
    if reload.returncode != 0:
        raise RuntimeError(
            f"the fresh process exited with status {reload.returncode}:\n{reload.stderr.strip()[-2000:]}"
        )
    there = torch.load(Path(workdir) / "reload_outputs.pt", weights_only=False)
    # decode zips with the evaluation set: the predictions of the first len(features) examples.
    trained, reloaded = task.decode(here), task.decode(there["outputs"])
    differing = [i for i, (a, b) in enumerate(zip(trained, reloaded)) if a != b]
    difference = compare_outputs(here, there["outputs"])
    tolerance = reload_tolerance(head, model.dtype, here)
    return {
        "reloaded_class": there["class"],
        "examples": len(features),
        "differing_predictions": len(differing),
        # The first few, to show what differs.
        "differences": [{"example": i, "trained": trained[i], "reloaded": reloaded[i]} for i in differing[:3]],
        "compared": "generated tokens" if head == "seq2seq" else "logits",
        "max_abs_diff": difference,
        "tolerance": tolerance,
        "dtype": str(model.dtype).removeprefix("torch."),
        # Logits within rounding are the same model, even where a near tie then falls the other way.
        "passed": difference <= tolerance,
    }


def describe_reload_failure(reload: dict, output_dir) -> str:
    if "error" in reload:
        return (
            f"the check that the model saved in {output_dir}/model reloads as the trained one could not run:\n"
            f"{reload['error']}\n"
            f"the run is kept in {output_dir}"
        )
    if reload["compared"] == "logits":
        how = (
            f"the logits by up to {reload['max_abs_diff']:.3g}, more than the {reload['tolerance']:.3g} that "
            f"{reload['dtype']} rounding explains"
        )
    else:
        how = "the generated tokens are not the same"
    lines = [
        f"the model saved in {output_dir}/model, reloaded in a fresh process, is not the trained one: "
        f"{reload['differing_predictions']} of {reload['examples']} predictions differ, {how}"
    ]
    lines += [
        f"  example {d['example']}: {d['trained']!r} trained, {d['reloaded']!r} reloaded"
        for d in reload["differences"]
    ]
    lines.append(f"the run is kept in {output_dir} (results.json has the comparison under 'reload')")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- main


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="finetune.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--head", choices=sorted(AUTO_CLASSES), default="qa", help="what to finetune (default: qa, extractive QA)"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a FAT5 checkpoint folder or hub id: a seq2seq checkpoint (its encoder feeds the encoder-only heads) "
        "or one of the head itself. `python examples/pretrain.py` builds one from the shipped corpus.",
    )
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the one saved with --model)")
    parser.add_argument("--train-file", help="training data, JSON lines (default: the shipped data of the head)")
    parser.add_argument("--eval-file", help="held-out data, JSON lines (default: the shipped data of the head)")
    parser.add_argument("--output-dir", required=True, help="where model/ and results.json go (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists")
    parser.add_argument("--max-steps", type=positive_int, default=300, help="optimizer steps (default: 300)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="per-device batch size (default: 32)")
    parser.add_argument(
        "--gradient-accumulation-steps",
        type=positive_int,
        default=1,
        help="batches summed into each optimizer step: the global batch is batch size x processes x this (default: 1)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default: 5%% of the steps)")
    parser.add_argument("--max-length", type=int, default=256, help="max input tokens (default: 256)")
    parser.add_argument("--max-target-length", type=int, default=32, help="seq2seq: max target tokens (default: 32)")
    parser.add_argument("--max-train-examples", type=int, help="use only the first N training examples")
    parser.add_argument("--max-eval-examples", type=int, help="use only the first N evaluation examples")
    parser.add_argument(
        "--reload-check-examples", type=int, default=64, help="examples compared after the reload (default: 64)"
    )
    parser.add_argument("--no-reload-check", action="store_true", help="skip the fresh-process reload check")
    parser.add_argument("--skip-initial-eval", action="store_true", help="do not evaluate before training")
    parser.add_argument("--bf16", action="store_true", help="train in bfloat16 mixed precision (GPU)")
    parser.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pack training batches into rows (default: on a GPU; --no-pack pads them)",
    )
    parser.add_argument(
        "--pack-length",
        type=positive_int,
        default=None,
        help="tokens a packed training row holds (default: 4 x --max-length)",
    )
    parser.add_argument(
        "--pack-target-length",
        type=positive_int,
        default=None,
        help="seq2seq: target tokens a packed row holds (default: 4 x --max-target-length)",
    )
    parser.add_argument("--no-compile", action="store_true", help="do not compile the model on a GPU")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each compiled step from CUDA graphs (torch_compile_mode='reduce-overhead'; GPU only): faster "
        "where the host cannot launch the kernels as fast as the GPU runs them",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quiet", action="store_true", help="no progress bars nor logs")
    return parser


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    """Within the block, SIGTERM (a scheduler's stop, torchrun ending its workers) unwinds the stack as Ctrl-C does, so
    that `finally` clauses run and remove the temporary folder; the default action would kill the process at once."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def move_into_place(workdir: Path, output_dir: Path):
    """Renames `workdir` to `output_dir`. A previous `output_dir` is first renamed aside and removed only once the new
    one is in place, so that an interruption at any point leaves one of the two whole under its name."""
    if not output_dir.exists():
        workdir.rename(output_dir)
        return
    aside = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.old-"))
    previous = aside / output_dir.name
    output_dir.rename(previous)
    try:
        workdir.rename(output_dir)
    except BaseException:
        previous.rename(output_dir)
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def run(args) -> dict:
    """The whole flow; returns the results (also written to OUTPUT_DIR/results.json). Raises UsageError, and
    ReloadCheckFailed once the run is in place. SIGTERM interrupts it as Ctrl-C does: the temporary folder is removed,
    and a previous OUTPUT_DIR is left as it was."""
    with sigterm_as_keyboard_interrupt():
        return finetune_and_save(args)


def finetune_and_save(args) -> dict:
    timings = {}
    started = time.perf_counter()
    head = args.head
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.overwrite:
        raise UsageError(f"{output_dir} exists; pass --overwrite to replace it")
    train_file = Path(args.train_file or DATA_DIR / DEFAULT_FILES[head][0])
    eval_file = Path(args.eval_file or DATA_DIR / DEFAULT_FILES[head][1])
    if args.pack_length is not None and args.pack_length < args.max_length:
        raise UsageError(f"--pack-length {args.pack_length} is shorter than --max-length {args.max_length}")
    if args.pack_target_length is not None and args.pack_target_length < args.max_target_length:
        raise UsageError(
            f"--pack-target-length {args.pack_target_length} is shorter than --max-target-length "
            f"{args.max_target_length}"
        )
    if args.cuda_graphs and (args.no_compile or not torch.cuda.is_available()):
        raise UsageError(
            "--cuda-graphs replays the compiled model's steps on a GPU: it needs a CUDA GPU and cannot go with "
            "--no-compile"
        )
    if args.pack is None:
        args.pack = torch.cuda.is_available()
    train_rows = load_jsonl(train_file, head, args.max_train_examples)
    eval_rows = load_jsonl(eval_file, head, args.max_eval_examples)

    # Check the checkpoint and tokenizer before anything is written.
    check_path_exists(args.model, "model")
    if args.tokenizer:
        check_path_exists(args.tokenizer, "tokenizer")
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    task = Task(head, tokenizer, train_rows, eval_rows, args)
    # Before loading: the encoder heads start from a fresh, random head, which --seed must make reproducible too.
    set_seed(args.seed)
    model = load_model(head, args.model, task.model_kwargs())
    if len(tokenizer) > model.config.vocab_size:
        raise UsageError(f"the tokenizer has {len(tokenizer)} tokens, the model only {model.config.vocab_size}")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.tmp-"))
    try:
        common = {
            "output_dir": str(workdir / "trainer"),
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "per_device_eval_batch_size": 2 * args.batch_size,
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": "linear",
            "warmup_steps": args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 20),
            "weight_decay": 0.01,
            "logging_steps": max(1, args.max_steps // 10),
            "save_strategy": "no",
            "report_to": "none",
            "seed": args.seed,
            "bf16": args.bf16,
            "disable_tqdm": args.quiet,
            "dataloader_num_workers": 0,
            # Every parameter takes part in each step; Trainer's default for DDP walks the autograd graph every step to
            # look for unused ones (a head that left one out would fail loudly, not train wrong).
            "ddp_find_unused_parameters": False,
            # Without a GPU, processes started by `accelerate launch` (torchrun) must join a gloo group on the CPU.
            "use_cpu": not torch.cuda.is_available(),
            # Compiled on a GPU (the kernels compile into the graph); packed rows give it one shape to compile.
            "torch_compile": torch.cuda.is_available() and not args.no_compile,
            "torch_compile_mode": "reduce-overhead" if args.cuda_graphs else None,
        }
        generation_kwargs = None
        if head == "seq2seq":
            generation_kwargs = {"max_new_tokens": args.max_target_length, "num_beams": 1, "do_sample": False}
            training_args = Seq2SeqTrainingArguments(
                predict_with_generate=True,
                generation_max_length=args.max_target_length,
                generation_num_beams=1,
                **common,
            )
            trainer_class = Seq2SeqTrainer
        else:
            training_args = TrainingArguments(**common)
            trainer_class = Trainer
        trainer = trainer_class(
            model=model,
            args=training_args,
            train_dataset=task.train_features,
            eval_dataset=task.eval_features,
            data_collator=task.collator(model),
            processing_class=tokenizer,
        )

        def evaluate():
            trainer.data_collator = task.collator(model)
            t = time.perf_counter()
            result = trainer.predict(task.eval_features)
            outputs = split_outputs(head, result.predictions)
            if head in ("qa", "token-cls"):  # trim Trainer's cross-batch padding to each example's length
                outputs = [
                    (o[0][: len(f["input_ids"])], o[1][: len(f["input_ids"])])
                    if head == "qa"
                    else o[: len(f["input_ids"])]
                    for o, f in zip(outputs, task.eval_features)
                ]
            predictions = task.decode(outputs)
            return task.score(predictions), predictions, time.perf_counter() - t

        results = {"head": head, "model": str(args.model), "train_examples": len(train_rows)}
        results["eval_examples"] = len(eval_rows)
        if not args.skip_initial_eval:
            results["before"], _, timings["eval_before_s"] = evaluate()
        t = time.perf_counter()
        trainer.data_collator = task.training_collator(model)
        train_result = trainer.train()
        timings["train_s"] = time.perf_counter() - t
        results["train_loss"] = train_result.training_loss
        # (step, loss) as logged every `logging_steps`: what runs on different numbers of processes compare.
        results["loss_curve"] = [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]
        results["train_samples_per_second"] = train_result.metrics["train_samples_per_second"]
        results["packed"] = args.pack
        results["compiled"] = training_args.torch_compile
        results["cuda_graphs"] = args.cuda_graphs
        results["after"], predictions, timings["eval_after_s"] = evaluate()

        # Every process takes part in saving (FSDP gathers the full state dict); the main process writes.
        model_dir = workdir / "model"
        trainer.save_model(str(model_dir))
        # The last step every process takes part in: destroy the process group now. Left to interpreter exit, a gloo
        # group's threads can abort a process after its work is done (seen in the two-process CPU test).
        trainer.accelerator.end_training()
        if not trainer.is_world_process_zero():
            return results
        (model_dir / "training_args.bin").unlink(missing_ok=True)
        results["saved_files"] = sorted(p.name for p in model_dir.iterdir())
        if not args.no_reload_check:
            t = time.perf_counter()
            # A sharded (FSDP) model cannot run on one process alone: compare with the saved weights loaded here.
            if trainer.is_fsdp_enabled:
                here = AUTO_CLASSES[head].from_pretrained(model_dir).to(trainer.args.device)
            else:
                here = without_mixed_precision(trainer)
            results["reload"] = check_reload(head, here, model_dir, task, workdir, generation_kwargs)
            timings["reload_check_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - started
        results["timings"] = timings
        results["device"] = str(trainer.args.device)
        results["num_processes"] = trainer.args.world_size
        results["global_batch_size"] = trainer.args.world_size * args.batch_size * args.gradient_accumulation_steps
        results["distributed"] = trainer.accelerator.distributed_type.value
        results["attn_implementation"] = trainer.model.config._attn_implementation
        (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        with open(workdir / "predictions.jsonl", "w", encoding="utf-8") as f:
            for row, prediction in zip(eval_rows, predictions):
                f.write(json.dumps({"id": row.get("id"), "prediction": prediction}) + "\n")
        shutil.rmtree(workdir / "trainer", ignore_errors=True)
        for leftover in ("reload_inputs.pt", "reload_outputs.pt"):
            (workdir / leftover).unlink(missing_ok=True)
        move_into_place(workdir, output_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "reload" in results and not results["reload"]["passed"]:
        raise ReloadCheckFailed(describe_reload_failure(results["reload"], output_dir))
    return results


def without_mixed_precision(trainer):
    """The trained model computing in its weights' dtype, as the fresh process of the reload check does, through its
    class's own `forward`.

    Mixed precision wraps the instance's `forward` in autocast; removing that instance attribute brings the class's
    `forward` back. `unwrap_model(keep_fp32_wrapper=False)` would not do: it unwraps every `__wrapped__`, the model's
    own decorators included. Without `deprecate_kwarg`, the `past_key_values` that `generate` passes in transformers
    5.17 reaches the decoder beside `cache=None`, and the decoder drops the generation cache.
    """
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    vars(model).pop("forward", None)
    return model


def format_results(results) -> str:
    """A short table: metrics before and after finetuning."""
    after = results["after"]
    before = results.get("before", {})
    lines = [f"{'metric':<14}{'before':>10}{'after':>10}", "-" * 34]
    for name, value in after.items():
        previous = f"{before[name]:10.1f}" if name in before else f"{'-':>10}"
        lines.append(f"{name:<14}{previous}{value:10.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Scoped to this run: setting TRANSFORMERS_VERBOSITY here would leak into the caller's process and its children.
    previous_verbosity = transformers_logging.get_verbosity()
    if args.quiet:
        transformers_logging.set_verbosity_error()
    try:
        results = run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ReloadCheckFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): the temporary folder was removed", file=sys.stderr)
        return 130
    finally:
        transformers_logging.set_verbosity(previous_verbosity)
    if "saved_files" in results and not args.quiet:
        print(f"\n{args.head}: {results['eval_examples']} held-out examples\n{format_results(results)}")
        print(f"saved to {args.output_dir}/model: {', '.join(results['saved_files'])}")
        if "reload" in results:
            reload = results["reload"]
            same = reload["examples"] - reload["differing_predictions"]
            print(
                f"fresh process: {reload['reloaded_class']} reloaded through {AUTO_CLASSES[args.head].__name__}, "
                f"same predictions on {same} of {reload['examples']} examples (max |diff| "
                f"{reload['max_abs_diff']:.1e}, {reload['dtype']} tolerance {reload['tolerance']:.1e})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
