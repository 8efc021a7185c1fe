# Copyright 2026 The FAT5 Authors. Licensed under the Apache License, Version 2.0.
"""Padding-free training: a data collator that packs variable-length examples into rows of a fixed length.

The FAT5 models keep the examples of a row apart (`segment_ids`): attention stays within an example (self-attention,
the decoder's causal self-attention, and cross-attention between an example's targets and its own inputs), T5's
relative bias is computed within it as before, and every head scores each example on its own. Fixed row lengths give
static shapes: `torch.compile` compiles once.
"""

from collections.abc import Sequence

import torch


class DataCollatorWithPacking:
    """Packs tokenized examples into rows of `max_length` input tokens, each into the first row with room for it.

    Each feature holds `input_ids` and the labels of one head:

    - seq2seq (`FlashT5ForConditionalGeneration`): `labels`, the target tokens; give `decoder_max_length`, the
      length of a row of targets. A row closes when either its inputs or its targets are full.
    - token classification: `labels`, one per input token.
    - sequence classification: `labels`, one per example (an int, or a float for regression).
    - extractive QA: `start_positions` and `end_positions`, token indices within the example (an index past the
      example, an answer truncated away, is ignored by the loss as in transformers' QA heads).

    A batch holds `input_ids`, `attention_mask` and `segment_ids` (rows, max_length): the examples of a row have ids
    1, 2, ... in turn and padding 0. Seq2seq adds `labels` and `decoder_segment_ids` (rows, decoder_max_length);
    token classification `labels` (rows, max_length); the per-example heads `labels` or `start_positions` and
    `end_positions` of shape (rows, max_examples_per_row), example k of a row in column k - 1, -100 where a row has
    fewer examples (NaN for regression labels). An example longer than a row is an error, not truncated. A later short
    example can fill a gap in an earlier row: read row by row, the examples keep their batch order within each row but
    not across rows, which training (a mean over examples) does not see.
    """

    def __init__(
        self,
        max_length: int,
        decoder_max_length: int | None = None,
        max_examples_per_row: int = 64,
        pad_token_id: int = 0,
        label_pad_token_id: int = -100,
        return_tensors: str = "pt",
    ):
        if max_length < 1:
            raise ValueError(f"`max_length`={max_length} must be positive.")
        if decoder_max_length is not None and decoder_max_length < 1:
            raise ValueError(f"`decoder_max_length`={decoder_max_length} must be positive.")
        if max_examples_per_row < 1:
            raise ValueError(f"`max_examples_per_row`={max_examples_per_row} must be positive.")
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors`={return_tensors!r}: only 'pt' is supported.")
        self.max_length = max_length
        self.decoder_max_length = decoder_max_length
        self.max_examples_per_row = max_examples_per_row
        self.pad_token_id = pad_token_id
        self.label_pad_token_id = label_pad_token_id

    def _kind(self, feature: dict) -> str:
        if "start_positions" in feature or "end_positions" in feature:
            return "question_answering"
        if "labels" not in feature:
            return "inputs_only"
        if not isinstance(feature["labels"], Sequence | torch.Tensor) or _is_scalar(feature["labels"]):
            return "sequence_classification"
        # A sequence of labels: target tokens where rows of targets are asked for, else one label a token.
        return "token_classification" if self.decoder_max_length is None else "seq2seq"

    def _rows(self, features: list[dict], kind: str) -> list[list[int]]:
        """Indices of the features of each row, by first fit: each example, in order, goes into the first row with
        room for its inputs (and targets), else opens a row. Rows then come fuller than if only the last row were
        open (about 11 % fewer rows of mT5-like lengths), so fewer padding tokens are computed."""
        rows, used, used_targets = [], [], []
        for index, feature in enumerate(features):
            length = len(feature["input_ids"])
            targets = len(feature["labels"]) if kind == "seq2seq" else 0
            if length > self.max_length:
                raise ValueError(
                    f"Example {index} has {length} input tokens, more than a row's `max_length`={self.max_length}."
                )
            if kind == "seq2seq" and targets > self.decoder_max_length:
                raise ValueError(
                    f"Example {index} has {targets} target tokens, more than a row's "
                    f"`decoder_max_length`={self.decoder_max_length}."
                )
            row = next(
                (
                    row
                    for row in range(len(rows))
                    if used[row] + length <= self.max_length
                    and len(rows[row]) < self.max_examples_per_row
                    and (kind != "seq2seq" or used_targets[row] + targets <= self.decoder_max_length)
                ),
                len(rows),
            )
            if row == len(rows):
                rows.append([])
                used.append(0)
                used_targets.append(0)
            rows[row].append(index)
            used[row] += length
            used_targets[row] += targets
        return rows

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot pack an empty list of features.")
        kinds = {self._kind(feature) for feature in features}
        if len(kinds) > 1:
            raise ValueError(f"The features mix labels of different heads: {sorted(kinds)}.")
        kind = kinds.pop()
        if kind == "seq2seq" and self.decoder_max_length is None:
            raise ValueError("Seq2seq labels need `decoder_max_length`, the length of a row of targets.")
        rows = self._rows(features, kind)
        count, length = len(rows), self.max_length
        input_ids = torch.full((count, length), self.pad_token_id, dtype=torch.long)
        segment_ids = torch.zeros(count, length, dtype=torch.long)
        batch = {"input_ids": input_ids, "segment_ids": segment_ids}
        per_example = kind in ("question_answering", "sequence_classification")
        if kind == "seq2seq":
            batch["labels"] = torch.full((count, self.decoder_max_length), self.label_pad_token_id, dtype=torch.long)
            batch["decoder_segment_ids"] = torch.zeros(count, self.decoder_max_length, dtype=torch.long)
        elif kind == "token_classification":
            batch["labels"] = torch.full((count, length), self.label_pad_token_id, dtype=torch.long)
        elif kind == "question_answering":
            for name in ("start_positions", "end_positions"):
                batch[name] = torch.full((count, self.max_examples_per_row), self.label_pad_token_id, dtype=torch.long)
        elif kind == "sequence_classification":
            floating = any(isinstance(_as_scalar(feature["labels"]), float) for feature in features)
            batch["labels"] = torch.full(
                (count, self.max_examples_per_row),
                float("nan") if floating else self.label_pad_token_id,
                dtype=torch.float if floating else torch.long,
            )
        for row, indices in enumerate(rows):
            start, target_start = 0, 0
            for slot, index in enumerate(indices):
                feature = features[index]
                tokens = torch.as_tensor(feature["input_ids"], dtype=torch.long)
                end = start + len(tokens)
                input_ids[row, start:end] = tokens
                segment_ids[row, start:end] = slot + 1
                if kind == "seq2seq":
                    targets = torch.as_tensor(feature["labels"], dtype=torch.long)
                    target_end = target_start + len(targets)
                    batch["labels"][row, target_start:target_end] = targets
                    batch["decoder_segment_ids"][row, target_start:target_end] = slot + 1
                    target_start = target_end
                elif kind == "token_classification":
                    batch["labels"][row, start:end] = torch.as_tensor(feature["labels"], dtype=torch.long)
                elif kind == "question_answering":
                    for name in ("start_positions", "end_positions"):
                        position = int(_as_scalar(feature[name]))
                        if position < 0:
                            raise ValueError(f"Example {index}: `{name}`={position} is negative.")
                        # Past the example (an answer truncated away): ignored, as transformers' QA heads do.
                        if position < len(tokens):
                            batch[name][row, slot] = start + position
                elif per_example:
                    batch["labels"][row, slot] = _as_scalar(feature["labels"])
                start = end
        batch["attention_mask"] = (segment_ids != 0).long()
        return batch


def _is_scalar(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 0


def _as_scalar(value):
    return value.item() if isinstance(value, torch.Tensor) else value


__all__ = ["DataCollatorWithPacking"]
