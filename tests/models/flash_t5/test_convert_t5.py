# Copyright 2026 The FAT5 Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""T5-family checkpoints convert to FAT5 and keep their outputs (logits, greedy and beam generation)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertModel,
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    UMT5Config,
    UMT5ForConditionalGeneration,
)

import fat5  # noqa: F401
from fat5 import FlashT5EncoderModel, FlashT5ForConditionalGeneration
from fat5.models.flash_t5 import convert_t5_to_flash_t5 as converter
from fat5.models.flash_t5.convert_t5_to_flash_t5 import convert_t5_model, convert_t5_to_flash_t5, main


VOCAB = 99
NUM_DEC = 3  # unequal depths: the decoder cache must be sized by num_decoder_layers


def tiny_shape(num_decoder_layers):
    """The sizes of the tiny T5 and mT5 models."""
    return {
        "vocab_size": VOCAB,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 48,
        "num_layers": 2,
        "num_decoder_layers": num_decoder_layers,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "dropout_rate": 0.0,
        "decoder_start_token_id": 0,
    }


def with_separate_head_and_perturbed_norms(model, separate_lm_head):
    """`model`, its LM head made a matrix of its own if asked (as T5 v1.1's and Google's mT5's), and its norms moved
    off 1 so that a misplaced one shows."""
    if separate_lm_head:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def tiny_t5_config(version, num_decoder_layers=NUM_DEC):
    common = {**tiny_shape(num_decoder_layers), "relative_attention_max_distance": 20}
    if version == "v1.0":  # ReLU, tied embeddings, decoder output scaled by d_model ** -0.5
        return T5Config(**common, feed_forward_proj="relu", tie_word_embeddings=True)
    return T5Config(**common, feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # v1.1 / FLAN-T5


def tiny_t5(version, seed=0, num_decoder_layers=NUM_DEC):
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(tiny_t5_config(version, num_decoder_layers)).eval()
    # T5 v1.1 has a separate output matrix; give it one whatever the tying rules of the installed transformers
    separate_lm_head = version == "v1.1" and model.lm_head.weight is model.shared.weight
    return with_separate_head_and_perturbed_norms(model, separate_lm_head)


def inputs(seed=1, batch=3, enc_len=30, dec_len=7):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch, enc_len), generator=generator)
    decoder_input_ids = torch.randint(2, VOCAB, (batch, dec_len), generator=generator)
    decoder_input_ids[:, 0] = 0
    return input_ids, decoder_input_ids


def assert_relative_close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp(min=1e-6)
    assert ((actual - expected).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_converted_logits_match(version):
    t5 = tiny_t5(version)
    fat5_model = convert_t5_model(t5)
    assert isinstance(fat5_model, FlashT5ForConditionalGeneration)
    assert fat5_model.config.scale_decoder_outputs == (version == "v1.0")
    assert fat5_model.config.tie_word_embeddings == (version == "v1.0")
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
        actual = fat5_model(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
    assert_relative_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    assert_relative_close(actual.logits, expected.logits)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_converted_generate_matches(version, num_beams):
    # Upstream T5's own generate sizes its cache by the encoder depth (transformers 5.24), so compare at equal depths;
    # FAT5 with a deeper decoder is covered by the generation tests.
    t5 = tiny_t5(version, num_decoder_layers=2)
    fat5_model = convert_t5_model(t5)
    input_ids, _ = inputs(batch=2, enc_len=12)
    kwargs = {"max_new_tokens": 10, "num_beams": num_beams, "do_sample": False, "min_new_tokens": 10}
    with torch.no_grad():
        expected = t5.generate(input_ids, **kwargs)
        actual = fat5_model.generate(input_ids, **kwargs)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_convert_folder_cli_and_from_pretrained(version, tmp_path):
    t5 = tiny_t5(version)
    t5.save_pretrained(tmp_path / "t5")
    reloaded_t5 = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    main([str(tmp_path / "t5"), str(tmp_path / "fat5")])

    config = json.loads((tmp_path / "fat5" / "config.json").read_text())
    assert config["model_type"] == "flash_t5"
    assert "auto_map" not in config
    converted = FlashT5ForConditionalGeneration.from_pretrained(tmp_path / "fat5").eval()
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = reloaded_t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        actual = converted(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    assert_relative_close(actual, expected)

    # the Python entry point gives the same model
    again = convert_t5_to_flash_t5(str(tmp_path / "t5"))
    with torch.no_grad():
        assert_relative_close(again(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits, expected)


def test_from_pretrained_converts_t5_folder_on_the_fly(tmp_path):
    t5 = tiny_t5("v1.1")
    t5.save_pretrained(tmp_path)
    t5 = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    model = FlashT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        actual = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    assert_relative_close(actual, expected)


def test_encoder_model_converts():
    torch.manual_seed(0)
    t5_encoder = T5EncoderModel(tiny_t5_config("v1.1")).eval()
    converted = convert_t5_model(t5_encoder)
    assert isinstance(converted, FlashT5EncoderModel)
    input_ids, _ = inputs()
    with torch.no_grad():
        expected = t5_encoder(input_ids=input_ids).last_hidden_state
        actual = converted(input_ids=input_ids).last_hidden_state
    assert_relative_close(actual, expected)


def test_encoder_folder_converts(tmp_path):
    torch.manual_seed(0)
    t5_encoder = T5EncoderModel(tiny_t5_config("v1.0")).eval()
    t5_encoder.save_pretrained(tmp_path / "t5")
    converted = convert_t5_to_flash_t5(str(tmp_path / "t5"), str(tmp_path / "fat5"))
    assert isinstance(converted, FlashT5EncoderModel)
    reloaded = FlashT5EncoderModel.from_pretrained(tmp_path / "fat5").eval()
    input_ids, _ = inputs()
    with torch.no_grad():
        assert_relative_close(
            reloaded(input_ids=input_ids).last_hidden_state, t5_encoder(input_ids=input_ids).last_hidden_state
        )


def test_umt5_is_refused(tmp_path):
    config = UMT5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    umt5 = UMT5ForConditionalGeneration(config)
    with pytest.raises(ValueError, match="UMT5"):
        convert_t5_model(umt5)
    umt5.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="UMT5"):
        convert_t5_to_flash_t5(str(tmp_path))


def test_non_t5_is_refused(tmp_path):
    bert = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="T5-family"):
        convert_t5_model(bert)
    bert.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="T5-family"):
        convert_t5_to_flash_t5(str(tmp_path))


# mT5 (issue 24, item 1). Google's mT5 checkpoints have a separate LM head and a config.json that says so
# (`tie_word_embeddings: false`), and MT5ForConditionalGeneration never scales the decoder output, tied or not; but
# transformers 5.x's MT5Config forces `tie_word_embeddings` to True and has no `scale_decoder_outputs`.


def tiny_mt5_config(num_decoder_layers=NUM_DEC):
    return MT5Config(**tiny_shape(num_decoder_layers), feed_forward_proj="gated-gelu")


def tiny_mt5(separate_lm_head, seed=0, num_decoder_layers=NUM_DEC):
    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(tiny_mt5_config(num_decoder_layers)).eval()
    # A separate head as Google's checkpoints have (transformers 5.x ties a model it builds itself).
    return with_separate_head_and_perturbed_norms(model, separate_lm_head)


def write_google_mt5_folder(folder, num_decoder_layers=NUM_DEC):
    """A tiny mT5 checkpoint laid out as Google's (google/mt5-small and siblings): config.json with Google's keys
    (written by transformers 4.x: `tie_word_embeddings: false`, no derived keys), every weight stored, the LM head
    its own matrix, and no generation_config.json."""
    model = tiny_mt5(separate_lm_head=True, num_decoder_layers=num_decoder_layers)
    os.makedirs(folder)
    config = model.config
    google_config = {
        "architectures": ["MT5ForConditionalGeneration"],
        "d_ff": config.d_ff,
        "d_kv": config.d_kv,
        "d_model": config.d_model,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.0,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "mt5",
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "num_layers": config.num_layers,
        "pad_token_id": 0,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "tie_word_embeddings": False,
        "tokenizer_class": "T5Tokenizer",
        "transformers_version": "4.10.0.dev0",
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(google_config, f, indent=2)
    # cloned: safetensors stores no shared storage (the embeddings are one tensor in the model)
    state_dict = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    assert not torch.equal(state_dict["lm_head.weight"], state_dict["shared.weight"])
    save_file(state_dict, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def assert_same_outputs(upstream, converted, generate=True):
    input_ids, decoder_input_ids = inputs()
    with torch.no_grad():
        expected = upstream(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
        actual = converted(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
    assert_relative_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    assert_relative_close(actual.logits, expected.logits)
    if not generate:
        return
    input_ids, _ = inputs(batch=2, enc_len=12)
    for num_beams in (1, 3):
        kwargs = {"max_new_tokens": 10, "num_beams": num_beams, "do_sample": False, "min_new_tokens": 10}
        with torch.no_grad():
            assert torch.equal(converted.generate(input_ids, **kwargs), upstream.generate(input_ids, **kwargs))


@pytest.mark.parametrize("entry_point", ["cli", "python"])
def test_google_mt5_folder_converts_to_the_same_model(entry_point, tmp_path):
    # Equal depths: upstream's generate sizes its cache by the encoder depth (see test_converted_generate_matches).
    write_google_mt5_folder(tmp_path / "mt5", num_decoder_layers=2)
    upstream = MT5ForConditionalGeneration.from_pretrained(tmp_path / "mt5").eval()
    assert upstream.lm_head.weight is not upstream.shared.weight
    if entry_point == "cli":
        main([str(tmp_path / "mt5"), str(tmp_path / "fat5")])
    else:
        convert_t5_to_flash_t5(str(tmp_path / "mt5"), str(tmp_path / "fat5"))

    converted = FlashT5ForConditionalGeneration.from_pretrained(tmp_path / "fat5").eval()
    assert_same_outputs(upstream, converted)
    config = json.loads((tmp_path / "fat5" / "config.json").read_text())
    assert config["scale_decoder_outputs"] is False
    assert config["tie_word_embeddings"] is False


@pytest.mark.parametrize("separate_lm_head", [True, False], ids=["separate_head", "tied_head"])
def test_mt5_model_converts_to_the_same_model(separate_lm_head):
    upstream = tiny_mt5(separate_lm_head, num_decoder_layers=2)
    converted = convert_t5_model(upstream)
    assert_same_outputs(upstream, converted)
    assert converted.config.scale_decoder_outputs is False
    assert converted.config.tie_word_embeddings is not separate_lm_head


@pytest.mark.parametrize("layout", ["google", "saved_by_transformers"])
def test_mt5_folder_loads_directly_as_the_same_model(layout, tmp_path):
    """`FlashT5ForConditionalGeneration.from_pretrained(mt5_folder)`, without converting: mT5 never rescales its decoder
    output, also from a folder that transformers 5.x saved (its config says `tie_word_embeddings: true`)."""
    if layout == "google":
        write_google_mt5_folder(tmp_path / "mt5", num_decoder_layers=2)
    else:
        tiny_mt5(separate_lm_head=False, num_decoder_layers=2).save_pretrained(tmp_path / "mt5")
    upstream = MT5ForConditionalGeneration.from_pretrained(tmp_path / "mt5").eval()
    loaded = FlashT5ForConditionalGeneration.from_pretrained(tmp_path / "mt5").eval()
    assert loaded.config.scale_decoder_outputs is False
    assert_same_outputs(upstream, loaded, generate=False)


# The CLI's refusals (issue 24, item 6): one line on stderr, a non-zero exit, nothing loaded, nothing written.


@pytest.fixture
def no_loading(monkeypatch):
    """Makes any attempt to load a checkpoint fail the test: the refusals come before loading (no hub calls)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the converter loaded a checkpoint before refusing")

    monkeypatch.setattr(converter.AutoConfig, "from_pretrained", refuse)


def snapshot(folder):
    """Every file under `folder` (the folder included) with its bytes, to check that nothing changed."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def assert_refused(argv, capsys, message):
    assert main(argv) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err


@pytest.fixture
def t5_folder(tmp_path):
    tiny_t5("v1.1").save_pretrained(tmp_path / "t5")
    return tmp_path / "t5"


@pytest.mark.parametrize("missing", ["./no-such-t5", "{tmp}/no-such-t5", "~/no-such-t5-fat5-test", "a/b/no-such-t5"])
def test_cli_refuses_a_missing_local_source(missing, tmp_path, capsys, no_loading, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = missing.format(tmp=tmp_path)
    assert_refused([source, str(tmp_path / "fat5")], capsys, "does not exist")
    assert sorted(os.listdir(tmp_path)) == []


def test_cli_refuses_a_file_destination(t5_folder, tmp_path, capsys, no_loading):
    destination = tmp_path / "fat5.bin"
    destination.write_bytes(b"keep me")
    before = snapshot(tmp_path)
    assert_refused([str(t5_folder), str(destination)], capsys, "not a folder")
    assert_refused([str(t5_folder), str(destination), "--overwrite"], capsys, "not a folder")
    assert snapshot(tmp_path) == before


def test_cli_refuses_a_non_empty_destination_folder(t5_folder, tmp_path, capsys, no_loading):
    destination = tmp_path / "fat5"
    destination.mkdir()
    (destination / "config.json").write_text('{"keep": "me"}')
    before = snapshot(tmp_path)
    assert_refused([str(t5_folder), str(destination)], capsys, "--overwrite")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("spelling", ["same", "trailing_slash", "dot", "parent"])
def test_cli_refuses_the_source_as_destination(spelling, t5_folder, tmp_path, capsys, no_loading):
    destination = {
        "same": str(t5_folder),
        "trailing_slash": str(t5_folder) + os.sep,
        "dot": os.path.join(str(t5_folder), "."),
        "parent": str(tmp_path),  # with --overwrite this would delete the source
    }[spelling]
    before = snapshot(tmp_path)
    assert_refused([str(t5_folder), destination], capsys, "is the source or holds it")
    assert_refused([str(t5_folder), destination, "--overwrite"], capsys, "is the source or holds it")
    assert snapshot(tmp_path) == before


def test_cli_exits_non_zero_in_a_fresh_process(t5_folder, tmp_path):
    # The exit status a shell sees: an existing file as destination used to print "Saved ..." and exit 0.
    destination = tmp_path / "fat5.bin"
    destination.write_bytes(b"keep me")
    result = subprocess.run(
        [sys.executable, "-m", "fat5.models.flash_t5.convert_t5_to_flash_t5", str(t5_folder), str(destination)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("error: destination"), result.stderr
    assert destination.read_bytes() == b"keep me"


def test_cli_writes_into_an_empty_folder_and_overwrites_only_when_asked(t5_folder, tmp_path, capsys):
    destination = tmp_path / "fat5"
    destination.mkdir()
    assert main([str(t5_folder), str(destination)]) == 0
    assert json.loads((destination / "config.json").read_text())["model_type"] == "flash_t5"

    (destination / "stale.txt").write_text("from an older conversion")
    assert main([str(t5_folder), str(destination), "--overwrite"]) == 0
    assert not (destination / "stale.txt").exists()
    assert json.loads((destination / "config.json").read_text())["model_type"] == "flash_t5"
    assert sorted(os.listdir(tmp_path)) == ["fat5", "t5"]  # no temporary folder left beside it
    FlashT5ForConditionalGeneration.from_pretrained(destination)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_a_failed_save_leaves_the_destination_as_it_was(existing, t5_folder, tmp_path, monkeypatch):
    destination = tmp_path / "fat5"
    if existing:
        destination.mkdir()
        (destination / "config.json").write_text('{"keep": "me"}')
    before = snapshot(tmp_path)

    def fail_halfway(self, save_directory, **kwargs):
        os.makedirs(save_directory, exist_ok=True)  # as save_pretrained does
        with open(os.path.join(save_directory, "config.json"), "w") as f:
            f.write("{}")
        raise OSError("disk full")

    monkeypatch.setattr(FlashT5ForConditionalGeneration, "save_pretrained", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        main([str(t5_folder), str(destination)] + (["--overwrite"] if existing else []))
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == (["fat5", "t5"] if existing else ["t5"])
