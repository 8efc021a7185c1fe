"""A first tour of FAT5: build a small model, run every head and `generate`, save, reload through the Auto classes.

Run with `make tour` (or `python examples/tour.py`). Everything happens on the CPU in a few seconds.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTextEncoding,
    AutoModelForTokenClassification,
)

import fat5


RELOAD_CHECK = """
import sys, torch, fat5
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1]).eval()
expected = torch.load(sys.argv[2])
out = model.generate(expected["input_ids"], attention_mask=expected["attention_mask"], max_new_tokens=8, do_sample=False)
assert torch.equal(out, expected["generated"]), "generation differs after reloading in a fresh process"
print("fresh process: AutoModelForSeq2SeqLM reloaded the folder and generated the same tokens")
"""


def main():
    torch.manual_seed(0)
    config = fat5.FlashT5Config(
        vocab_size=128,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        num_labels=3,
    )
    model = fat5.FlashT5ForConditionalGeneration(config).eval()
    print(
        f"FlashT5ForConditionalGeneration: {model.num_parameters():,} parameters, attention '{config._attn_implementation}'"
    )

    input_ids = torch.randint(2, config.vocab_size, (2, 12))
    input_ids[:, -1] = config.eos_token_id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding on the second row
    labels = torch.randint(2, config.vocab_size, (2, 6))

    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    print(f"seq2seq loss on random labels: {loss.item():.3f} (about ln(vocab) = {torch.tensor(128.0).log():.3f})")
    greedy = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False)
    beams = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, num_beams=3)
    print(f"generate: greedy {tuple(greedy.shape)}, beam search {tuple(beams.shape)}")

    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir) / "fat5-demo"
        model.save_pretrained(folder)
        files = sorted(p.name for p in Path(folder).iterdir())
        print(f"save_pretrained wrote {files}")
        for auto_class in (
            AutoModel,
            AutoModelForSeq2SeqLM,
            AutoModelForTextEncoding,
            AutoModelForSequenceClassification,
            AutoModelForQuestionAnswering,
            AutoModelForTokenClassification,
        ):
            head = auto_class.from_pretrained(folder).eval()
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if auto_class in (AutoModel, AutoModelForSeq2SeqLM):
                inputs["decoder_input_ids"] = labels
            with torch.no_grad():
                output = head(**inputs)
            shapes = {name: tuple(value.shape) for name, value in output.items() if isinstance(value, torch.Tensor)}
            print(f"{auto_class.__name__:36s} -> {type(head).__name__:34s} {shapes}")

        expected = {"input_ids": input_ids, "attention_mask": attention_mask, "generated": greedy}
        torch.save(expected, Path(workdir) / "expected.pt")
        subprocess.run(
            [sys.executable, "-c", RELOAD_CHECK, str(folder), str(Path(workdir) / "expected.pt")], check=True
        )


if __name__ == "__main__":
    main()
