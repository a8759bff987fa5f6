"""Sizing a model from its config.json alone: parameters, weights, KV cache, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from batchserve.cli import main
from batchserve_planning.configsize import (
    GROUP_SIZE,
    ModelConfigError,
    ModelShape,
    kv_bytes_per_token,
    model_shape,
    weight_bytes,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama2"
PUBLISHED = {"7b": ("6.74", 6_738_415_616), "13b": ("13.0", 13_015_864_320), "70b": ("69.0", 68_976_648_192)}
"""Llama-2's published sizes in billions (the paper and model card: 6.74B, 13.0B, 69.0B), and the
count of each, from the published configuration by hand: embeddings and the output head 2 x 32,000 x
hidden, per layer 4 x hidden^2 (attention; the 70B's k and v projections to 8 of 64 heads) and
3 x hidden x intermediate (the gated MLP) and 2 x hidden (norms), a final norm."""

SMALL_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 176, "num_hidden_layers": 3, "num_attention_heads": 8,
    "num_key_value_heads": 2, "vocab_size": 300, "tie_word_embeddings": False}
SMALL: dict[str, dict[str, Any]] = {
    "llama-gqa": SMALL_LLAMA,
    "llama-tied": {**SMALL_LLAMA, "tie_word_embeddings": True, "num_key_value_heads": 8},
    "bert": {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 48,
             "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 250},
    "bert-classifier": {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
                        "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "vocab_size": 250, "num_labels": 3},
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 2,
             "n_head": 4, "vocab_size": 200, "n_positions": 128},
}


def write_config(folder: Path, fields: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def real_model(fields: dict[str, Any]) -> torch.nn.Module:
    """The model the config describes, built for real on the CPU."""
    config = transformers.AutoConfig.for_model(**fields)
    model: torch.nn.Module = getattr(transformers, fields["architectures"][0])(config)
    return model


@pytest.fixture(scope="module")
def llama2() -> dict[str, ModelShape]:
    return {name: model_shape(FIXTURES / name) for name in PUBLISHED}


def test_by_hand_counts_follow_the_formula() -> None:
    for name, (hidden, intermediate, layers, kv_fraction) in {
            "7b": (4096, 11008, 32, 1), "13b": (5120, 13824, 40, 1), "70b": (8192, 28672, 80, 8)}.items():
        attention = 2 * hidden * hidden + 2 * hidden * hidden // kv_fraction
        per_layer = attention + 3 * hidden * intermediate + 2 * hidden
        assert PUBLISHED[name][1] == 2 * 32000 * hidden + layers * per_layer + hidden


@pytest.mark.parametrize("name", sorted(SMALL))
def test_parameters_equal_a_real_model_built_from_the_config(tmp_path: Path, name: str) -> None:
    shape = model_shape(write_config(tmp_path / name, SMALL[name]))
    model = real_model(SMALL[name])
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert shape.architecture == SMALL[name]["architectures"][0]


def test_tied_output_head_counts_once(tmp_path: Path) -> None:
    untied = model_shape(write_config(tmp_path / "untied",
                                      {**SMALL["llama-tied"], "tie_word_embeddings": False}))
    tied = model_shape(write_config(tmp_path / "tied", SMALL["llama-tied"]))
    assert tied.tied_embeddings and not untied.tied_embeddings
    assert untied.parameters - tied.parameters == 300 * 64


def test_parameters_equal_accelerates_estimate_of_the_same_folder(tmp_path: Path) -> None:
    # accelerate's create_empty_model (estimate-memory) asks the Hub about the name it is given first,
    # so it does not run on a local folder offline; its estimate is AutoModel.from_config under
    # init_empty_weights, sized by calculate_maximum_sizes: that, here, on the same folder.
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes

    folder = write_config(tmp_path / "llama", SMALL_LLAMA)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights():
        base = transformers.AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    total_bytes, _ = calculate_maximum_sizes(base)
    element = next(base.parameters()).element_size()
    buffer_bytes = sum(b.numel() * b.element_size() for b in base.buffers())  # rotary frequencies
    shape = model_shape(folder)
    head = SMALL_LLAMA["vocab_size"] * SMALL_LLAMA["hidden_size"]  # AutoModel: LlamaModel, no lm_head
    assert total_bytes - buffer_bytes == element * (shape.parameters - head)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_llama2_counts_match_the_published_sizes(llama2: dict[str, ModelShape], name: str) -> None:
    published, by_hand = PUBLISHED[name]
    count = llama2[name].parameters
    assert count == by_hand
    # The published figure is the count rounded to its digits (13.0B: 13,015,864,320 is 0.12% above
    # 13.0e9, inside that rounding); 6.74B and 69.0B are also within 0.1%.
    assert f"{count / 1e9:.{len(published.split('.')[1])}f}" == published
    if name != "13b":
        assert abs(count / (float(published) * 1e9) - 1) < 0.001


def test_llama2_7b_weights_by_format(llama2: dict[str, ModelShape]) -> None:
    shape = llama2["7b"]
    hidden, intermediate, layers, vocab = 4096, 11008, 32, 32000
    matrices = layers * (4 * hidden * hidden + 3 * hidden * intermediate)
    assert shape.matrix_parameters == matrices
    rest = shape.parameters - matrices  # embeddings, lm_head, norms
    assert rest == 2 * vocab * hidden + (2 * layers + 1) * hidden
    rows = layers * (4 * hidden + 2 * intermediate + hidden)
    groups = layers * (4 * hidden * hidden + 2 * intermediate * hidden + hidden * intermediate) // GROUP_SIZE
    assert weight_bytes(shape) == {
        "float32": 4 * shape.parameters, "float16": 2 * shape.parameters,
        "int8": matrices + 2 * rows + 2 * rest,
        "int4": matrices // 2 + (5 * groups) // 2 + 2 * rest}


def test_kv_cache_per_token_by_hand(llama2: dict[str, ModelShape]) -> None:
    # Without grouped-query attention (7B: 32 KV heads = 32 heads of 128): 2 x 32 x 32 x 128 x 2 bytes.
    assert kv_bytes_per_token(llama2["7b"], "float16") == 2 * 32 * 32 * 128 * 2 == 524_288
    # With it (70B: 8 KV heads for 64 heads): 2 x 80 x 8 x 128 x 2 bytes; float8 half that.
    assert kv_bytes_per_token(llama2["70b"], "float16") == 2 * 80 * 8 * 128 * 2 == 327_680
    assert kv_bytes_per_token(llama2["70b"], "float8") == 163_840
    # Split over 16 GPUs, 8 KV heads: each GPU still holds one head's copy.
    assert kv_bytes_per_token(llama2["70b"], "float16", 4) == 327_680 // 4
    assert kv_bytes_per_token(llama2["70b"], "float16", 16) == 327_680 // 8


def test_cli_reports_kv_cache_per_sequence(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = write_config(tmp_path / "small", {**SMALL_LLAMA, "head_dim": 16})
    code = main(["inspect", "--model-config", str(folder / "config.json"), "--context", "100",
                 "--sequences", "3", "--kv-dtype", "float32", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    per_token = 2 * 3 * 2 * 16 * 4  # layers 3, KV heads 2, head_dim 16 (given, not 64 / 8), float32
    assert report["kv_cache"]["per_token_bytes"] == per_token
    assert report["kv_cache"]["per_sequence_bytes"] == per_token * 100
    assert report["kv_cache"]["by_sequences"] == {"3": per_token * 300}
    assert report["parameters"] == sum(p.numel() for p in real_model({**SMALL_LLAMA, "head_dim": 16})
                                       .parameters())


def test_encoder_has_no_kv_cache(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = write_config(tmp_path / "bert", SMALL["bert"])
    assert main(["inspect", "--model-config", str(folder), "--json"]) == 0
    assert "kv_cache" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("content", "message"), [
    ('{"model_type": "frobnicator", "hidden_size": 8}',
     "model_type 'frobnicator' is not an architecture transformers"),
    ('{"hidden_size": 8}', "no model_type field"),
    (json.dumps({k: v for k, v in SMALL_LLAMA.items() if k != "num_hidden_layers"}),
     "missing field num_hidden_layers"),
    (json.dumps({k: v for k, v in SMALL["gpt2"].items() if k != "n_head"}),
     "missing field num_attention_heads (or n_head)"),
    (json.dumps({**SMALL_LLAMA, "hidden_size": "64"}), "hidden_size must be a positive integer"),
    (json.dumps({**SMALL_LLAMA, "num_key_value_heads": "x"}),
     "transformers refuses it: Validation error for field 'num_key_value_heads'"),
    (json.dumps({**SMALL_LLAMA, "num_key_value_heads": 3}),
     "num_attention_heads 8 is not a multiple of num_key_value_heads 3"),
    ('{"model_type": "llama",', "not JSON"),
    ("[1, 2]", "not a JSON object"),
])
def test_bad_config_is_named_without_a_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 content: str, message: str) -> None:
    file = tmp_path / "config.json"
    file.write_text(content)
    assert main(["inspect", "--model-config", str(file)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(file) in err and "Traceback" not in err


def test_missing_file_and_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", "--model-config", str(tmp_path / "nope.json")]) == 2
    assert f"{tmp_path / 'nope.json'}: no such file" in capsys.readouterr().err
    assert main(["inspect", "--model-config", str(tmp_path)]) == 2
    assert f"{tmp_path} has no config.json" in capsys.readouterr().err


def test_shape_rejects_a_missing_field_directly(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "x", {k: v for k, v in SMALL_LLAMA.items() if k != "vocab_size"})
    with pytest.raises(ModelConfigError, match="missing field vocab_size"):
        model_shape(folder)


def test_inspect_needs_a_name_or_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect"]) == 2
    assert "give a model NAME (from --config) or --model-config PATH" in capsys.readouterr().err
    assert main(["inspect", "diabetes", "--model-config", str(FIXTURES / "7b")]) == 2
    assert "leave out the name ('diabetes')" in capsys.readouterr().err
    assert main(["inspect", "diabetes", "--hardware", "models/hardware.gpus.example.toml"]) == 2
    assert "--hardware sizes GPUs for --model-config" in capsys.readouterr().err
