"""Training a real thinker, on tiny stand-ins saved to folders: SFT from a base loaded by path exactly as a hub id
would be (Qwen2.5-VL and Qwen3-VL), frozen parts left bit-identical, the processor's pixel budget, LoRA with an
adapter and a merged model, resumable runs (an in-process crash, and kill -9 of an sft process), and GRPO with the
edit reward's call counts carried across a resume. CPU, tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from editthinker.backends.vlm_thinker import VLMThinker
from editthinker.config import Params, ThinkerModelConfig
from editthinker.models import vlm
from editthinker.models.parts import part_of
from editthinker.models.tiny_vlm import MODEL_KIND, QWEN3_KIND, build_tiny_qwen3_thinker, build_tiny_thinker
from editthinker.models.vlm import checkpoint_id, save_thinker
from editthinker.roles import ThinkRequest
from editthinker.storage import CHECKSUMS_FILE
from editthinker.training import last_checkpoint, work_dir
from test_training import IMAGES, step_samples, write_steps

pytestmark = pytest.mark.xdist_group("training")

TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_new_tokens": 24}
CFG = ThinkerModelConfig(**TINY)
SFT = {"max_steps": 4, "batch_size": 4, "learning_rate": 4e-3, "save_steps": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    write_steps(root / "sft", step_samples(31, 16, "sft"), rows_per_shard=8)
    write_steps(root / "rl", step_samples(32, 4, "rl"), rows_per_shard=8)
    return root


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen2.5-VL and a tiny Qwen3-VL saved as folders, as a release would be on the hub."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for family, build, kind in (("qwen2_5_vl", build_tiny_thinker, MODEL_KIND),
                                ("qwen3_vl", build_tiny_qwen3_thinker, QWEN3_KIND)):  # fmt: skip
        model, processor = build(CFG, seed=5)
        save_thinker(model, processor, root / family, kind)
        (root / family / vlm.THINKER_FILE).unlink()  # a release has no thinker.json: its family is read from config
        (root / family / CHECKSUMS_FILE).unlink()  # nor our checksums
        out[family] = root / family
    return out


def _params(**sections) -> Params:
    sections["rl"] = {"select": None, **sections.get("rl", {})}  # rl.select is tested in test_training
    return Params.model_validate({"thinker": TINY, "sft": SFT, **sections})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _by_part(weights: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if part_of(k) == part}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def _think_once(folder: Path) -> str:
    r = step_samples(33, 1, "test")[0]
    thinker = VLMThinker(folder, CFG)
    request = ThinkRequest(IMAGES[r["source_image"]], IMAGES[r["previous_image"]], r["original_instruction"],
                           r["previous_instruction"])  # fmt: skip
    (raw,) = thinker.generate([request])
    return raw


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_sft_from_a_base_folder_with_vision_tower_and_projector_frozen(family, bases, data, tmp_path, monkeypatch):
    from editthinker.stages import sft

    calls = []
    real = vlm.AutoModelForImageTextToText.from_pretrained

    def spy(name, *args, **kwargs):
        calls.append((name, kwargs))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(vlm.AutoModelForImageTextToText, "from_pretrained", spy)
    base = bases[family]
    params = _params(
        thinker={**TINY, "base_model": str(base), "image_min_pixels": 1024, "image_max_pixels": 48 * 48},
        sft={**SFT, "freeze_vision_tower": True, "freeze_projector": True},
    )
    out = tmp_path / "sft"
    m = sft.run(params, data / "sft", out)

    assert calls[0][0] == str(base)  # the folder goes to from_pretrained as the id would
    assert calls[0][1] == {"use_safetensors": True, "dtype": torch.float32, "revision": None,
                           "trust_remote_code": False}  # fmt: skip
    assert m["steps"] == 4 and m["model_id"].startswith(f"{family}@") and m["model_id"] == checkpoint_id(out)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["models"]["base"] == checkpoint_id(base)
    before, after = _weights(base), _weights(out)
    for part in ("vision_tower", "projector"):
        assert _by_part(before, part), part  # the family's parts were found
        assert not _changed(_by_part(before, part), _by_part(after, part)), part  # bit-identical
    assert _changed(_by_part(before, "language_model"), _by_part(after, "language_model"))
    size = json.loads((out / "processor_config.json").read_text())["image_processor"]["size"]
    assert (size["shortest_edge"], size["longest_edge"]) == (1024, 48 * 48)
    assert VLMThinker(out, CFG).processor.image_processor.size.longest_edge == 48 * 48
    assert isinstance(_think_once(out), str)


def test_a_hub_id_takes_the_same_load_call_as_a_folder(monkeypatch, bases):
    calls = []

    class Stop(Exception):
        pass

    def spy(name, *args, **kwargs):
        calls.append((name, kwargs))
        raise Stop

    monkeypatch.setattr(vlm.AutoModelForImageTextToText, "from_pretrained", spy)
    for name in (str(bases["qwen3_vl"]), "Qwen/Qwen3-VL-8B-Instruct"):
        with pytest.raises(Stop):
            vlm.load_base(name, revision="abc123", dtype="bfloat16")
    assert [c[0] for c in calls] == [str(bases["qwen3_vl"]), "Qwen/Qwen3-VL-8B-Instruct"]
    assert calls[0][1] == calls[1][1] == {"use_safetensors": True, "dtype": torch.bfloat16, "revision": "abc123",
                                          "trust_remote_code": False}  # fmt: skip


def test_freezing_the_language_model_trains_only_the_vision_side(bases, data, tmp_path):
    from editthinker.stages import sft

    base = bases["qwen2_5_vl"]
    params = _params(thinker={**TINY, "base_model": str(base)}, sft={**SFT, "freeze_language_model": True})
    sft.run(params, data / "sft", tmp_path / "sft")
    before, after = _weights(base), _weights(tmp_path / "sft")
    assert not _changed(_by_part(before, "language_model"), _by_part(after, "language_model"))
    assert _changed(_by_part(before, "vision_tower"), _by_part(after, "vision_tower"))


def test_lora_saves_an_adapter_and_a_merged_model_that_vlm_thinker_loads(bases, data, tmp_path):
    from peft import PeftModel

    from editthinker.stages import sft

    base = bases["qwen2_5_vl"]
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    params = _params(thinker={**TINY, "base_model": str(base)},
                     sft={**SFT, "lora": lora, "freeze_vision_tower": True, "freeze_projector": True})  # fmt: skip
    out = tmp_path / "sft"
    m = sft.run(params, data / "sft", out)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    targets = adapter["target_modules"]
    assert targets and all(part_of(t) == "language_model" for t in targets)  # the frozen tower gets none
    assert not (out / "config.json").read_text().count("lora")  # the checkpoint itself is a plain model
    merged = _weights(out)
    assert not any("lora" in k for k in merged)
    changed = _changed(_weights(base), merged)
    assert changed and all(part_of(k) == "language_model" for k in changed)

    model, _ = vlm.load_thinker(base)
    again = PeftModel.from_pretrained(model, out / "adapter").merge_and_unload().state_dict()
    loaded = vlm.load_thinker(out)[0].state_dict()
    assert again.keys() == loaded.keys()
    for k, v in loaded.items():
        assert torch.allclose(again[k], v, atol=1e-6), k  # the checkpoint is the merge of base + adapter
    assert VLMThinker(out, CFG).model_id == m["model_id"]
    assert isinstance(_think_once(out), str)


class Crash(Exception):
    pass


def _crash_at(step: int):
    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Crash(f"crashed at step {step}")

    return CrashAt()


def test_a_crashed_sft_run_resumes_and_restart_starts_over(data, tmp_path, monkeypatch):
    from editthinker.stages import sft

    params = _params(sft={**SFT, "max_steps": 6, "save_steps": 2, "save_total_limit": 1})
    straight = sft.run(params, data / "sft", tmp_path / "straight")
    assert straight["resumed_from_step"] == 0 and straight["steps_run"] == 6

    out = tmp_path / "sft"
    monkeypatch.setattr(sft, "LogHistory", lambda desc: _crash_at(5))  # the run dies after its step-4 checkpoint
    with pytest.raises(Crash):
        sft.run(params, data / "sft", out)
    monkeypatch.undo()
    work = next(tmp_path.glob(".sft.sft-*.checkpoints"))
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit 1
    (work / "checkpoint-6").mkdir()  # a checkpoint a kill left half-written: skipped, and removed

    resumed = sft.run(params, data / "sft", out)
    assert resumed["resumed_from_step"] == 4 and resumed["steps_run"] == 2 and resumed["steps"] == 6
    assert resumed["model_id"] == straight["model_id"]  # the same weights, bit for bit
    assert resumed["loss_curve"] == straight["loss_curve"]  # the whole curve, from the checkpoint's history
    assert not work.exists()  # the run's checkpoints go once its output is saved

    monkeypatch.setattr(sft, "LogHistory", lambda desc: _crash_at(3))
    with pytest.raises(Crash):
        sft.run(params, data / "sft", out)
    monkeypatch.undo()
    fresh = sft.run(params, data / "sft", out, restart=True)
    assert fresh["resumed_from_step"] == 0 and fresh["steps_run"] == 6
    assert fresh["model_id"] == straight["model_id"]


def test_work_dirs_are_named_by_the_run_and_can_live_on_a_volume(tmp_path, monkeypatch):
    monkeypatch.delenv("EDITTHINKER_CHECKPOINT_ROOT", raising=False)
    assert (
        work_dir(tmp_path / "models" / "sft", "sft", "ab" * 32)
        == tmp_path / "models" / f".sft.sft-{'ab' * 8}.checkpoints"
    )
    monkeypatch.setenv("EDITTHINKER_CHECKPOINT_ROOT", str(tmp_path / "pvc"))
    assert work_dir(tmp_path / "anywhere", "rl", "cd" * 32) == tmp_path / "pvc" / f"rl-{'cd' * 8}"
    for step, whole in ((2, True), (4, True), (6, False)):
        folder = tmp_path / "w" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if whole:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert last_checkpoint(tmp_path / "w") == tmp_path / "w" / "checkpoint-4"
    assert last_checkpoint(tmp_path / "empty") is None


def test_grpo_resumes_with_the_edit_calls_counted_across_the_crash(data, tmp_path, monkeypatch):
    from editthinker.stages import rl, sft

    params = _params(rl={"max_steps": 4, "batch_size": 4, "num_generations": 2, "save_steps": 2})
    sft.run(params, data / "sft", tmp_path / "sft")
    straight = rl.run(params, data / "rl", tmp_path / "sft", tmp_path / "straight")
    assert straight["edit_calls"]["edits_timed_out"] == 0 and straight["edit_calls"]["edits_failed"] == 0

    monkeypatch.setattr(rl, "LogHistory", lambda desc: _crash_at(3))
    with pytest.raises(Crash):
        rl.run(params, data / "rl", tmp_path / "sft", tmp_path / "rl")
    monkeypatch.undo()
    resumed = rl.run(params, data / "rl", tmp_path / "sft", tmp_path / "rl")
    assert resumed["resumed_from_step"] == 2 and resumed["steps_run"] == 2
    assert resumed["reward_curve"] == straight["reward_curve"]
    assert resumed["edit_calls"] == straight["edit_calls"]
    assert resumed["model_id"] == straight["model_id"]


@pytest.mark.slow
def test_kill_9_of_an_sft_process_then_a_rerun_resumes_to_the_same_weights(data, tmp_path):
    """Tolerance: none. On the CPU the resumed run restores weights, optimizer, scheduler, RNG and data order
    from the checkpoint, and ends with the same weights, bit for bit, as a run never interrupted."""
    from editthinker.stages import sft

    total = 80
    overlay = {"thinker": TINY, "sft": {**SFT, "max_steps": total, "save_steps": 5, "save_total_limit": 2}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    params = Params.model_validate(overlay)
    out = tmp_path / "models" / "sft"
    cmd = [sys.executable, "-m", "editthinker.cli", "sft", "--params", str(tmp_path / "overlay.yaml"),
           "--data", str(data / "sft"), "--images", str(data / "sft" / "images"), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EDITTHINKER_CHECKPOINT_ROOT", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while True:  # until a whole checkpoint at step 10 or later exists
            works = list(out.parent.glob(".sft.sft-*.checkpoints"))
            last = last_checkpoint(works[0]) if works else None
            if last is not None and int(last.name.split("-")[1]) >= 10:
                break
            assert proc.poll() is None, "the sft process ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # killed before its output

    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] >= 10 and resumed["steps_run"] < total and resumed["steps"] == total
    straight = sft.run(params, data / "sft", tmp_path / "straight")
    assert straight["steps_run"] == total
    a, b = _weights(out), _weights(tmp_path / "straight")
    assert not _changed(a, b)
    assert resumed["model_id"].split("@")[1] == straight["model_id"].split("@")[1]
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert not list(out.parent.glob(".sft.sft-*.checkpoints"))


def test_a_crashed_lora_run_resumes_from_its_adapter_checkpoint(data, tmp_path, monkeypatch):
    from editthinker.stages import sft

    params = _params(sft={**SFT, "max_steps": 4, "save_steps": 2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    straight = sft.run(params, data / "sft", tmp_path / "straight")
    monkeypatch.setattr(sft, "LogHistory", lambda desc: _crash_at(3))
    with pytest.raises(Crash):
        sft.run(params, data / "sft", tmp_path / "sft")
    monkeypatch.undo()
    resumed = sft.run(params, data / "sft", tmp_path / "sft")
    assert resumed["resumed_from_step"] == 2 and resumed["steps_run"] == 2
    assert resumed["model_id"] == straight["model_id"]
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "straight" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_a_resumed_run_continues_its_dvclive_curves_without_repeating_steps(data, tmp_path, monkeypatch):
    pytest.importorskip("dvclive")
    from editthinker.stages import sft
    from editthinker.training import TRAINING_LOGS_ENV

    params = _params(sft={**SFT, "max_steps": 5, "save_steps": 2})
    monkeypatch.setenv(TRAINING_LOGS_ENV, str(tmp_path / "straight-logs"))
    sft.run(params, data / "sft", tmp_path / "straight")
    monkeypatch.setenv(TRAINING_LOGS_ENV, str(tmp_path / "logs"))
    monkeypatch.setattr(sft, "LogHistory", lambda desc: _crash_at(4))  # dies at step 4 before logging or saving it
    with pytest.raises(Crash):
        sft.run(params, data / "sft", tmp_path / "sft")
    monkeypatch.setattr(sft, "LogHistory", lambda desc: _crash_at(-1))  # never: the rerun resumes from step 2
    assert sft.run(params, data / "sft", tmp_path / "sft")["resumed_from_step"] == 2

    def curve(root: Path) -> list[tuple[str, str]]:
        header, *rows = (root / "sft" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
        cols = header.split("\t")
        return [(r.split("\t")[cols.index("step")], r.split("\t")[cols.index("loss")]) for r in rows]

    straight, resumed = curve(tmp_path / "straight-logs"), curve(tmp_path / "logs")
    assert [s for s, _ in straight] == ["0", "1", "2", "3", "4"]
    assert resumed == straight
