"""bench/gpu_sft_mfu.py: the SFT MFU bench runs on a CPU with the tiny config, and its FLOP count matches
the 8B config's shapes (the GPU run itself needs a GPU; see the script's doc)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_sft_mfu", ROOT / "bench" / "gpu_sft_mfu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_on_cpu_reports_positive_numbers(bench, tmp_path):
    out = tmp_path / "mfu.json"
    code = bench.main(["--size", "tiny", "--device", "cpu", "--steps", "2", "--peak-tflops", "1", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("steps_per_s", "tokens_per_s", "tflops_achieved", "mfu", "model_flops_per_step"):
        assert isinstance(result[key], int | float) and result[key] > 0, key
    assert result["steps"] == 2 and result["device"] == "cpu"
    assert math.isfinite(result["loss_last"])
    assert result["params_trainable"] < result["params_total"]  # the vision tower is frozen
    assert result["mfu"] == pytest.approx(result["tflops_achieved"] / 1.0)


def test_8b_config_has_the_method_size_and_flops_follow_the_formula(bench):
    r = bench.run(bench.parse_args(["--size", "8b", "--dry-run", "--seq-len", "4096"]))
    assert 8.6e9 < r["params_total"] < 8.9e9  # Qwen3-VL-8B: 8.77B
    assert 0.5e9 < r["params_vision"] < 0.7e9
    h, kv, inter, layers, vocab = 4096, 8 * 128, 12288, 36, 151936
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    assert r["lm_matmul_params"] == layers * per_layer + vocab * h
    tokens = 4096
    attention = 12 * layers * 4096 * (32 * 128) * tokens
    assert r["lm_flops_per_step"] == 6 * r["lm_matmul_params"] * tokens + attention
    assert 0 < r["vision_flops_per_step"] < 0.05 * r["lm_flops_per_step"]
