"""The finetuning example (`examples/finetune.py`) end to end on tiny data: every head, bad input, push_to_hub,
`accelerate launch`, and the pretraining cache of the demo. Tiny models and a few steps: the file runs in about a
minute on 2 CPU cores."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import finetune
import pretrain
import pytest
import torch
import transformers

import fat5


DATA = finetune.DATA_DIR
TINY = ["--max-steps", "4", "--batch-size", "8", "--max-train-examples", "32", "--max-eval-examples", "12"]
TINY += ["--reload-check-examples", "8", "--max-length", "128", "--quiet"]
EXPECTED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
SUBPROCESS_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def run_finetune(*argv):
    return finetune.main([*map(str, argv), *TINY])


@pytest.mark.parametrize("head", ["qa", "seq-cls", "token-cls", "seq2seq"])
def test_every_head_trains_saves_and_reloads(head, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert run_finetune("--head", head, "--model", tiny_checkpoint, "--output-dir", out) == 0

    results = json.loads((out / "results.json").read_text())
    assert set(results["before"]) == set(results["after"]) and results["after"]
    # --max-steps 4 logs every step.
    assert [step for step, _ in results["loss_curve"]] == [1, 2, 3, 4]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in results["loss_curve"])
    assert results["train_samples_per_second"] > 0
    assert results["reload"]["max_abs_diff"] == 0.0
    expected_class = {
        "qa": "FlashT5ForQuestionAnswering",
        "seq-cls": "FlashT5ForSequenceClassification",
        "token-cls": "FlashT5ForTokenClassification",
        "seq2seq": "FlashT5ForConditionalGeneration",
    }[head]
    assert results["reload"]["reloaded_class"] == expected_class
    expected = EXPECTED_FILES | ({"generation_config.json"} if head == "seq2seq" else set())
    assert set(results["saved_files"]) == expected
    assert set(os.listdir(out)) == {"model", "results.json", "predictions.jsonl"}
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 12
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == [expected_class] and config["model_type"] == "flash_t5"
    if head in ("seq-cls", "token-cls"):
        assert set(config["label2id"]) >= ({"town", "person"} if head == "seq-cls" else {"O", "B-PER"})
    assert not list(tmp_path.glob(".*tmp-*")), "the temporary folder was left behind"


def test_seq2seq_uses_seq2seq_trainer_with_generate(tiny_checkpoint, tmp_path):
    """predict_with_generate: the saved predictions are generated strings."""
    data = tmp_path / "pairs.jsonl"
    rows = [{"source": f"copy: word{i}", "target": f"word{i}"} for i in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    argv = ["--head", "seq2seq", "--model", tiny_checkpoint, "--train-file", data, "--eval-file", data]
    assert run_finetune(*argv, "--output-dir", out, "--no-reload-check") == 0
    predictions = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 10 and all(isinstance(p, str) for p in predictions)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QA_ROW = {
    "context": "Ashford lies on the River Sell.",
    "question": "On which river does Ashford lie?",
    "answers": {"text": ["Sell"], "answer_start": [26]},
}


@pytest.mark.parametrize(
    "rows, head, message",
    [
        ([{"text": "no question here"}], "qa", "missing column(s)"),
        ([{**QA_ROW, "answers": {"text": ["Sell"], "answer_start": [3]}}], "qa", "does not lie in its context"),
        ([{**QA_ROW, "answers": {"text": ["Thames"], "answer_start": [26]}}], "qa", "does not lie in its context"),
        ([], "qa", "is empty"),
        ([{"text": "a town"}], "seq-cls", "missing column(s) ['label']"),
        ([{"tokens": ["a", "b"], "tags": ["O"]}], "token-cls", "same length"),
        ([{"input": "x"}], "seq2seq", "missing column(s)"),
    ],
)
def test_bad_datasets_fail_cleanly(rows, head, message, tiny_checkpoint, tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    code = run_finetune("--head", head, "--model", tiny_checkpoint, "--train-file", data, "--output-dir", out)
    assert code != 0
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["data.jsonl"], "nothing may be written on bad input"


def test_quiet_is_scoped_to_the_run(tiny_checkpoint, tmp_path, monkeypatch):
    """--quiet silences transformers for the run only: the caller's verbosity and environment (which its
    subprocesses inherit) are as they were, on the error path too."""
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    transformers.logging.set_verbosity_warning()
    data = write_jsonl(tmp_path / "data.jsonl", [{"text": "no question here"}])
    out = tmp_path / "run"
    assert run_finetune("--head", "qa", "--model", tiny_checkpoint, "--train-file", data, "--output-dir", out) != 0
    assert "TRANSFORMERS_VERBOSITY" not in os.environ
    assert transformers.logging.get_verbosity() == transformers.logging.WARNING


def test_bad_checkpoints_fail_cleanly(tiny_checkpoint, tmp_path, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    other_kind = tmp_path / "bert"
    other_kind.mkdir()
    (other_kind / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint / tokenizer_file, other_kind / tokenizer_file)
    missing = tmp_path / "missing" / "checkpoint"
    cases = [
        (not_a_model, "no tokenizer"),
        (other_kind, "not a FAT5"),
        (missing, f"the model path {missing} does not exist"),
        # Shaped like a hub id: looked up there too (offline in the tests).
        ("missing-folder/checkpoint", "missing-folder/checkpoint does not exist here, nor could it be loaded"),
    ]
    for model, message in cases:
        assert run_finetune("--model", model, "--output-dir", tmp_path / "run") == 2
        assert message in capsys.readouterr().err
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_checkpoint, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert run_finetune("--model", no_weights, "--output-dir", tmp_path / "run") == 2
    assert "could not load" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".*tmp-*"))


def test_existing_output_dir_is_kept_without_overwrite(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_finetune("--model", tiny_checkpoint, "--output-dir", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]


def test_overwrite_removes_the_previous_run_only_once_the_new_one_is_in_place(tiny_checkpoint, tmp_path, monkeypatch):
    """A failure (an interruption, a full disk) while the new run is moved into place leaves the previous run whole;
    an uninterrupted run replaces it, and no hidden folder stays behind either way."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["--head", "seq-cls", "--model", tiny_checkpoint, "--output-dir", out, "--overwrite", "--no-reload-check"]
    real_rename = Path.rename

    class Interrupted(Exception):
        """Stands for KeyboardInterrupt, which would stop pytest itself."""

    def interrupted_when_moving_the_new_run_in(self, target):
        if Path(target) == out and self.name.startswith(".run.tmp-"):
            raise Interrupted
        return real_rename(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", interrupted_when_moving_the_new_run_in)
        with pytest.raises(Interrupted):
            run_finetune(*argv)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["run"]

    assert run_finetune(*argv) == 0
    assert set(os.listdir(out)) == {"model", "results.json", "predictions.jsonl"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_sigterm_removes_the_temporary_folder(tiny_checkpoint, tmp_path):
    """SIGTERM (a scheduler's stop) during training unwinds like Ctrl-C: the temporary folder is removed."""
    out = tmp_path / "run"
    command = [sys.executable, str(finetune.EXAMPLES_DIR / "finetune.py"), "--head", "seq-cls"]
    command += ["--model", str(tiny_checkpoint), "--output-dir", str(out), *TINY, "--max-steps", "100000"]
    process = subprocess.Popen(command, env=SUBPROCESS_ENV, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".run.tmp-*")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".run.tmp-*")), "the run never started"
        time.sleep(1)  # into the training loop
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    assert os.listdir(tmp_path) == [], "SIGTERM left a folder behind"


@pytest.mark.parametrize("head", ["seq-cls", "seq2seq"])
def test_bf16_run_passes_its_reload_check(head, tiny_checkpoint, tmp_path):
    """--bf16 on the CPU: the trained model computes under bf16 autocast in training and evaluation; the reload check
    compares it with the reloaded model both in the saved (fp32) weights' own precision, so bf16 rounding is no
    reason to fail (it was: the run was deleted). Seq2seq generates on both sides (with transformers 5.17 it failed:
    test_reload_check_runs_the_trained_model_through_its_own_forward)."""
    out = tmp_path / "run"
    assert run_finetune("--head", head, "--model", tiny_checkpoint, "--output-dir", out, "--bf16") == 0
    reload = json.loads((out / "results.json").read_text())["reload"]
    assert reload["passed"] and reload["differing_predictions"] == 0
    assert reload["max_abs_diff"] <= reload["tolerance"] and reload["dtype"] == "float32"


def test_a_failed_reload_check_keeps_the_run_and_says_what_differs(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A reloaded model that is not the trained one (here its head is re-drawn after loading) fails the check: exit
    status 1, the differences named, and the trained model kept where it belongs."""
    corrupted = finetune.RELOAD_SCRIPT.replace(
        "tokenizer = ", "torch.nn.init.normal_(model.classification_head.out_proj.weight, std=10.0)\ntokenizer = "
    )
    assert corrupted != finetune.RELOAD_SCRIPT
    monkeypatch.setattr(finetune, "RELOAD_SCRIPT", corrupted)
    out = tmp_path / "run"
    assert run_finetune("--head", "seq-cls", "--model", tiny_checkpoint, "--output-dir", out) == 1
    err = capsys.readouterr().err
    assert "reloaded in a fresh process, is not the trained one" in err and "predictions differ" in err
    assert "float32 rounding explains" in err and f"the run is kept in {out}" in err
    assert set(os.listdir(out)) == {"model", "results.json", "predictions.jsonl"}
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out / "model"))
    reload = json.loads((out / "results.json").read_text())["reload"]
    assert not reload["passed"] and reload["max_abs_diff"] > reload["tolerance"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.parametrize("where", ["fresh process", "this process"])
def test_a_reload_check_that_crashes_keeps_the_run_and_shows_the_error(
    where, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """The check failing to run (here the fresh process raises before loading, or the comparison raises) is a failed
    check, not a lost run: exit status 1, the error shown, and the trained model kept."""
    if where == "fresh process":
        crashing = finetune.RELOAD_SCRIPT.replace("model = ", "raise RuntimeError('the reload broke')\nmodel = ", 1)
        assert crashing != finetune.RELOAD_SCRIPT
        monkeypatch.setattr(finetune, "RELOAD_SCRIPT", crashing)
    else:

        def compare_outputs(a, b):
            raise RuntimeError("the reload broke")

        monkeypatch.setattr(finetune, "compare_outputs", compare_outputs)
    out = tmp_path / "run"
    assert run_finetune("--head", "qa", "--model", tiny_checkpoint, "--output-dir", out) == 1
    err = capsys.readouterr().err
    assert "reloads as the trained one could not run" in err and "RuntimeError: the reload broke" in err
    assert ("exited with status 1" in err) == (where == "fresh process")
    assert f"the run is kept in {out}" in err
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out / "model"))
    reload = json.loads((out / "results.json").read_text())["reload"]
    assert not reload["passed"] and "the reload broke" in reload["error"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_reload_check_computes_in_full_fp32_where_trainer_turned_tf32_on():
    """`TrainingArguments(torch_compile=True)` turns TF32 on for the process; the reload check's outputs are computed
    without it on both sides (with it, a GPU run failed its check by TF32 rounding), without autograd, and the setting
    is restored."""
    from transformers.utils.import_utils import enable_tf32

    class RecordsPrecision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def forward(self, input_ids, attention_mask):
            self.seen.append((torch.backends.cuda.matmul.fp32_precision, torch.is_grad_enabled()))
            return transformers.modeling_outputs.SequenceClassifierOutput(logits=input_ids.float())

    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        enable_tf32(True)
        assert matmul.fp32_precision == "tf32"
        model = RecordsPrecision()
        features = [{"input_ids": torch.tensor([3, 4]), "attention_mask": torch.tensor([1, 1])}] * 3
        outputs = finetune.raw_outputs(
            "seq-cls",
            model,
            features,
            lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]},
            batch_size=2,
        )
        assert model.seen == [("ieee", False), ("ieee", False)] and len(outputs) == 3
        assert matmul.fp32_precision == "tf32"
    finally:
        torch.backends.fp32_precision = "none"
        matmul.fp32_precision = before


def test_gradient_accumulation_matches_one_batch_of_the_same_size(tiny_checkpoint, tmp_path):
    """Two accumulated batches of 4 are one optimizer step over the 8 examples of one batch of 8: the same first-step
    loss (each batch's loss is its share of the mean over both, through Trainer's token count)."""
    common = ["--head", "seq2seq", "--model", str(tiny_checkpoint)]
    finetune.main([*common, "--output-dir", str(tmp_path / "one"), *TINY])
    accumulated = ["--batch-size", "4", "--gradient-accumulation-steps", "2"]
    finetune.main([*common, "--output-dir", str(tmp_path / "accumulated"), *TINY, *accumulated])
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "accumulated"))
    assert one["global_batch_size"] == two["global_batch_size"] == 8
    assert two["loss_curve"][0][1] == pytest.approx(one["loss_curve"][0][1], rel=1e-4)


@pytest.mark.parametrize("flag", ["--batch-size", "--max-steps", "--gradient-accumulation-steps"])
def test_counts_must_be_positive(flag, capsys):
    with pytest.raises(SystemExit):
        finetune.build_parser().parse_args(["--head", "qa", "--model", "m", "--output-dir", "o", flag, "0"])
    assert f"argument {flag}: must be a positive integer, got 0" in capsys.readouterr().err


def test_help_explains_the_flags():
    result = subprocess.run(
        [sys.executable, str(finetune.EXAMPLES_DIR / "finetune.py"), "--help"],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )
    assert result.returncode == 0
    for flag in ("--head", "--model", "--train-file", "--eval-file", "--max-steps", "--output-dir", "accelerate"):
        assert flag in result.stdout


class LocalHub:
    """A file-based stand-in for the Hub API calls that transformers' `push_to_hub` makes."""

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            target = self.root / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(op.path_or_fileobj, target)
        return f"file://{self.root / repo_id}"


def test_push_to_hub_uploads_exactly_what_from_pretrained_needs(tiny_checkpoint, tmp_path, monkeypatch):
    """transformers' own `push_to_hub` (model and tokenizer), against a local stand-in of the Hub."""
    import huggingface_hub
    import transformers.utils.hub as transformers_hub

    out = tmp_path / "run"
    assert run_finetune("--head", "qa", "--model", tiny_checkpoint, "--output-dir", out, "--no-reload-check") == 0
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(transformers_hub, "_hf_api", hub)
    card = huggingface_hub.ModelCard("---\nlibrary_name: transformers\n---\nA FAT5 QA model.\n")
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card", lambda *args, **kwargs: card)

    model = finetune.AUTO_CLASSES["qa"].from_pretrained(out / "model")
    tokenizer = finetune.AutoTokenizer.from_pretrained(out / "model")
    model.push_to_hub("someone/fat5-qa")
    tokenizer.push_to_hub("someone/fat5-qa")

    repo = tmp_path / "hub" / "someone" / "fat5-qa"
    assert {p.name for p in repo.iterdir()} == EXPECTED_FILES | {"README.md"}
    assert not list(repo.rglob("*.py")), "no code may be uploaded: the model is native, no trust_remote_code"
    config = json.loads((repo / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "flash_t5"

    # A fresh process loads the "hub" folder through the Auto class and gives the same logits.
    inputs = tokenizer(["Who founded Ashford?"], ["Ashford was founded by Edwin Hale."], return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**inputs).start_logits
    torch.save({"inputs": dict(inputs), "expected": expected}, tmp_path / "check.pt")
    script = (
        "import sys, torch, fat5\n"
        "from transformers import AutoModelForQuestionAnswering\n"
        "saved = torch.load(sys.argv[2])\n"
        "model = AutoModelForQuestionAnswering.from_pretrained(sys.argv[1]).eval()\n"
        "got = model(**saved['inputs']).start_logits\n"
        "# Another process may reduce in another order (thread count): equal to rounding, same argmax.\n"
        "torch.testing.assert_close(got, saved['expected'], rtol=1e-5, atol=1e-5)\n"
        "assert torch.equal(got.argmax(-1), saved['expected'].argmax(-1))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(repo), str(tmp_path / "check.pt")], check=True, env=SUBPROCESS_ENV
    )


@pytest.mark.parametrize("head", ["qa", "seq-cls", "token-cls", "seq2seq"])
def test_accelerate_launch_matches_one_process_at_the_same_global_batch(head, tiny_checkpoint, tmp_path):
    """`accelerate launch` on the CPU: two processes (gloo) of 4 examples train as one process of 8 does (the first
    step's loss is that of the same 8 examples, and Trainer's count of labelled items makes it one mean; the same seed
    gives the encoder heads' fresh head the same init), one save by the main process."""
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("the accelerate CLI is not installed next to this Python")
    run_finetune("--head", head, "--model", tiny_checkpoint, "--output-dir", tmp_path / "single")
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    out = tmp_path / "run"
    # `--multi_gpu` picks accelerate's torchrun launcher; without a GPU the processes form a gloo group on the CPU
    # (`--cpu` would pick the single-process launcher, or mpirun).
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [str(finetune.EXAMPLES_DIR / "finetune.py"), "--head", head, "--model", str(tiny_checkpoint)]
    command += ["--output-dir", str(out), *TINY, "--batch-size", "4"]
    env = {**SUBPROCESS_ENV, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2, "accelerate did not start the processes asked for"
    assert results["distributed"] == "MULTI_CPU"
    assert [step for step, _ in results["loss_curve"]] == [1, 2, 3, 4]
    assert results["global_batch_size"] == single["global_batch_size"] == 8
    # The span heads' softmax runs over the padded positions too, as transformers' question-answering heads do: two
    # batches of 4, each padded to its own length, then give a loss within a fraction of a percent of the batch of 8.
    tolerance = 1e-2 if head == "qa" else 1e-4
    assert results["loss_curve"][0][1] == pytest.approx(single["loss_curve"][0][1], rel=tolerance)
    assert results["reload"]["max_abs_diff"] == 0.0
    assert set(results["saved_files"]) == EXPECTED_FILES | ({"generation_config.json"} if head == "seq2seq" else set())
    assert not list(tmp_path.glob(".*tmp-*"))


def test_pretrained_checkpoint_is_cached(tmp_path, monkeypatch):
    calls = []
    real_pretrain = pretrain.pretrain

    def counting_pretrain(*args, **kwargs):
        calls.append(args)
        return real_pretrain(*args, **{**kwargs, "batch_size": 4})

    monkeypatch.setattr(pretrain, "pretrain", counting_pretrain)
    first = pretrain.cached_checkpoint(size="tiny", steps=2, cache_dir=tmp_path, quiet=True)
    second = pretrain.cached_checkpoint(size="tiny", steps=2, cache_dir=tmp_path, quiet=True)
    assert first == second and len(calls) == 1
    assert {p.name for p in tmp_path.iterdir()} == {first.name}
    assert EXPECTED_FILES | {"generation_config.json"} == {p.name for p in first.iterdir()}


def test_span_corruption_keeps_every_token():
    import random

    tokens = list(range(10, 60))
    sentinels = list(range(100, 132))
    inputs, targets = pretrain.span_corruption(tokens, sentinels, eos_id=1, rng=random.Random(0))
    assert inputs[-1] == 1 and targets[-1] == 1
    rebuilt, spans = [], {}
    current = None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    for t in inputs[:-1]:
        rebuilt += spans[t] if t in sentinels else [t]
    assert rebuilt == tokens


def test_tour_runs():
    """The quick first tour (`make tour`): every head and generate, saved and reloaded in a fresh process."""
    result = subprocess.run(
        [sys.executable, str(finetune.EXAMPLES_DIR / "tour.py")], capture_output=True, text=True, env=SUBPROCESS_ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FlashT5ForQuestionAnswering" in result.stdout and "generated the same tokens" in result.stdout


@pytest.mark.parametrize(
    "argv", [["--cuda-graphs", "--no-compile"]] + ([] if torch.cuda.is_available() else [["--cuda-graphs"]])
)
def test_cuda_graphs_need_a_compiled_model_on_a_gpu(argv, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_finetune("--model", tiny_checkpoint, "--output-dir", out, *argv) == 2
    assert "--cuda-graphs replays the compiled model" in capsys.readouterr().err and not out.exists()


def test_reload_check_runs_the_trained_model_through_its_own_forward(tmp_path):
    """Mixed precision wraps the trained model's `forward` in autocast. The reload check's in-process side drops that
    wrapper but keeps the class's `forward` whole: its `deprecate_kwarg` hands `past_key_values` (what `generate` passes
    in transformers 5.17) to the decoder as its cache. Unwrapping every `__wrapped__` lost it, and generation with it."""
    torch.manual_seed(0)
    config = fat5.FlashT5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    examples = [{"input_ids": [5, 6, 7, 1], "labels": [8, 9, 1]}] * 4
    trainer = transformers.Seq2SeqTrainer(
        model=fat5.FlashT5ForConditionalGeneration(config),
        args=transformers.Seq2SeqTrainingArguments(
            tmp_path, bf16=True, use_cpu=True, max_steps=1, per_device_train_batch_size=4, report_to=[],
            save_strategy="no", remove_unused_columns=False, disable_tqdm=True,
        ),
        train_dataset=examples,
        data_collator=fat5.DataCollatorWithPacking(max_length=16, decoder_max_length=16),
    )  # fmt: skip
    trainer.train()
    assert "forward" in vars(trainer.model)  # mixed precision's wrapper: the case under test

    here = finetune.without_mixed_precision(trainer)
    cache = transformers.EncoderDecoderCache(transformers.DynamicCache(), transformers.DynamicCache())
    with torch.no_grad():
        here(input_ids=torch.tensor([[5, 6, 7, 1]]), decoder_input_ids=torch.tensor([[0, 8]]), past_key_values=cache)
    assert cache.get_seq_length() == 2
    assert "forward" not in vars(here)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs replay on a CUDA GPU only")
@pytest.mark.parametrize("head", ["qa", "seq-cls", "token-cls", "seq2seq"])
def test_cuda_graphs_train_evaluate_and_generate_for_every_head(head, tiny_checkpoint, tmp_path):
    """`--cuda-graphs` end to end: packed training steps replayed from CUDA graphs, then evaluation (padded batches,
    and generation for seq2seq) through the same compiled model, the save and the fresh-process reload."""
    out = tmp_path / "run"
    assert (
        run_finetune("--head", head, "--model", tiny_checkpoint, "--output-dir", out, "--bf16", "--cuda-graphs") == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["cuda_graphs"] and results["compiled"] and results["packed"]
    assert [step for step, _ in results["loss_curve"]] == [1, 2, 3, 4]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in results["loss_curve"])
    assert set(results["before"]) == set(results["after"]) and results["reload"]["passed"]
    predictions = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and all(p is not None for p in predictions)


@pytest.mark.parametrize("head", ["qa", "seq2seq"])
def test_training_packs_on_a_gpu_by_default_and_where_asked(head, tiny_checkpoint, tmp_path):
    """The README's recipe is the default on a GPU (packed training rows, compiled); on the CPU batches are padded
    unless `--pack` is given. Both train and reload; packed rows hold several examples (fewer rows than examples)."""
    default_out, packed_out = tmp_path / "default", tmp_path / "packed"
    assert run_finetune("--head", head, "--model", tiny_checkpoint, "--output-dir", default_out) == 0
    assert run_finetune("--head", head, "--model", tiny_checkpoint, "--output-dir", packed_out, "--pack") == 0
    default, packed = (json.loads((out / "results.json").read_text()) for out in (default_out, packed_out))
    assert default["packed"] == torch.cuda.is_available() and packed["packed"]
    assert packed["compiled"] == default["compiled"] == torch.cuda.is_available()
    for results in (default, packed):
        assert all(math.isfinite(loss) and loss > 0 for _, loss in results["loss_curve"])
        assert results["reload"]["passed"]

    task_args = finetune.build_parser().parse_args(
        ["--head", head, "--model", str(tiny_checkpoint), "--output-dir", str(tmp_path / "unused"), "--pack", *TINY]
    )
    tokenizer = finetune.load_tokenizer(str(tiny_checkpoint))
    rows = finetune.load_jsonl(finetune.DATA_DIR / finetune.DEFAULT_FILES[head][0], head, 8)
    task = finetune.Task(head, tokenizer, rows, rows, task_args)
    batch = task.training_collator()(task.train_features)
    assert batch["input_ids"].shape[0] < len(rows) and int(batch["segment_ids"].max()) >= 2
