"""GPUs from a config: the hardware file's GPU keys, tensor-parallel sizes, fits and prices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batchserve.cli import main
from batchserve_planning.configsize import ModelShape, activation_bytes, model_shape, weight_bytes
from batchserve_planning.gpufit import fit, per_gpu_bytes, tensor_parallel_sizes
from batchserve_planning.hardware import GIB, HardwareError, Profile, load_profiles

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "llama2"
OVERHEAD = int(1.5 * GIB)
OPTIONS: dict[str, Any] = {"context": 4096, "kv_dtype": "float16", "batch_tokens": 4096,
                          "overhead_bytes": OVERHEAD}


@pytest.fixture(scope="module")
def llama70b() -> ModelShape:
    return model_shape(FIXTURES / "70b")


@pytest.fixture(scope="module")
def llama7b() -> ModelShape:
    return model_shape(FIXTURES / "7b")


def gpu_profile(memory_gib: float, gpus: int, price: float = 8.0) -> Profile:
    return Profile(name=f"{memory_gib:g} GiB", memory_bytes=64 * GIB, price_per_hour=price, cpus=8,
                   gpu_memory_bytes=int(memory_gib * GIB), gpus=gpus)


def test_the_gpu_example_file_loads() -> None:
    profiles = load_profiles(ROOT / "models" / "hardware.gpus.example.toml")
    assert [(p.gpu_memory_bytes, p.gpus) for p in profiles] == [(24 * GIB, 8), (48 * GIB, 8), (80 * GIB, 8)]
    assert all(p.price_is_example for p in profiles)
    # the CPU profiles of recommend's file still load, with no GPU memory
    assert all(p.gpu_memory_bytes is None for p in load_profiles(ROOT / "models" / "hardware.example.toml"))


@pytest.mark.parametrize(("keys", "message"), [
    ("gpus = 2\n", "gpus must be a positive integer, with gpu_memory_gib"),
    ("gpu_memory_gib = 0\n", "gpu_memory_gib must be a positive number"),
    ('gpu_memory_gib = "80"\n', "gpu_memory_gib must be a positive number"),
    ("gpu_memory_gib = 80\ngpus = 0\n", "gpus must be a positive integer"),
    ("gpu_memory_gib = 80\ngpus = 1.5\n", "gpus must be a positive integer"),
])
def test_bad_gpu_keys_are_named(tmp_path: Path, keys: str, message: str) -> None:
    file = tmp_path / "hardware.toml"
    file.write_text('[[profiles]]\nname = "a"\ncpus = 1\nmemory_gib = 1\nprice_per_hour = 1\n'
                    'price_example = true\n' + keys)
    with pytest.raises(HardwareError, match=message):
        load_profiles(file)


def test_tensor_parallel_sizes_split_heads_evenly(llama70b: ModelShape) -> None:
    assert tensor_parallel_sizes(llama70b, 8) == [1, 2, 4, 8]  # 64 heads, 8 KV heads
    assert tensor_parallel_sizes(llama70b, 16)[-1] == 16  # 16 GPUs: each a copy of one KV head
    assert tensor_parallel_sizes(model_shape(FIXTURES / "13b"), 8) == [1, 2, 4, 5, 8]  # 40 heads


def test_per_gpu_bytes_by_hand(llama70b: ModelShape) -> None:
    parts = per_gpu_bytes(llama70b, "float16", 2, sequences=3, **OPTIONS)
    assert parts["weights"] == 2 * 68_976_648_192 // 2
    assert parts["kv_cache"] == 2 * 80 * 4 * 128 * 2 * 4096 * 3  # 4 of the 8 KV heads per GPU
    # activations: 4096 tokens x 2 bytes x (2 x 8192 + 3 x 28672 / 2) + 3 last-token logits in float32
    assert parts["activations"] == 4096 * 2 * (2 * 8192 + 3 * 28672 // 2) + 3 * 32000 * 4
    assert parts["total"] == parts["weights"] + parts["kv_cache"] + parts["activations"] + OVERHEAD
    assert activation_bytes(llama70b, 4096, "float16", 3, 2) == parts["activations"]


def test_least_gpus_room_and_price(llama70b: ModelShape, llama7b: ModelShape) -> None:
    row = fit(llama70b, gpu_profile(80, 8, price=28.0), "float16", sequences=[1, 32], **OPTIONS)
    assert not row["weights_fit_one_gpu"] and row["gpus_for_weights"] == 2
    one, many = row["by_sequences"]
    assert one["gpus"] == 2 and one["price_per_hour"] == 7.0  # 28 $/h for 8 GPUs, 2 used
    assert many["gpus"] == 4  # 32 sequences of 4,096 tokens: 40 GiB of KV cache more
    room = one["max_sequences"]
    for count, fits in ((room, True), (room + 1, False)):
        total = per_gpu_bytes(llama70b, "float16", 2, sequences=count, **OPTIONS)["total"]
        assert (total <= 80 * GIB) is fits
    small = fit(llama7b, gpu_profile(24, 1), "float16", sequences=[1], **OPTIONS)
    assert small["weights_fit_one_gpu"] and small["by_sequences"][0]["gpus"] == 1
    assert weight_bytes(llama7b)["float16"] + OVERHEAD < 24 * GIB


def test_what_does_not_fit_says_so(llama70b: ModelShape) -> None:
    row = fit(llama70b, gpu_profile(24, 2), "float16", sequences=[1], **OPTIONS)
    assert row["gpus_for_weights"] is None
    assert row["by_sequences"][0]["gpus"] is None
    assert row["by_sequences"][0]["reason"] == "does not fit on 2 GPUs of 24 GiB"


def test_cli_table_and_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    hardware = tmp_path / "hardware.toml"
    hardware.write_text('[[profiles]]\nname = "80"\ncpus = 8\nmemory_gib = 64\ngpu_memory_gib = 80\n'
                        'gpus = 8\nprice_per_hour = 28\nprice_source = "a test"\n'
                        '[[profiles]]\nname = "cpu"\ncpus = 1\nmemory_gib = 2\nprice_per_hour = 0.05\n'
                        'price_example = true\n')
    args = ["inspect", "--model-config", str(FIXTURES / "70b"), "--hardware", str(hardware),
            "--sequences", "1,32", "--formats", "float16,int4"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| 80 (8 x 80 GiB) | float16 | 128.5 GiB | 2 | 2 GPUs, room for 22, $7.00/h | 4 GPUs" in text
    assert "(no gpu_memory_gib, not sized: cpu)" in text
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["hardware"]["rows"]
    assert [(r["profile"], r["format"]) for r in rows] == [("80", "float16"), ("80", "int4")]
    assert report["hardware"]["overhead_gib"] == 1.5


def test_bad_options_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    for extra, message in ((["--formats", "int3"], "--formats: ['int3'] unknown"),
                           (["--sequences", "0"], "--sequences: values must be positive"),
                           (["--context", "0"], "--context must be positive"),
                           (["--hardware", "/nonexistent.toml"], "/nonexistent.toml")):
        assert main(["inspect", "--model-config", str(FIXTURES / "7b"), *extra]) == 2
        assert message in capsys.readouterr().err
