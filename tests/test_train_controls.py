"""What the training params control, without training: model parts by family, freezing, LoRA targets, the global
batch, precision, vLLM settings and validation. No model is trained here."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from editthinker.config import Params, RLParams, SFTParams, ThinkerModelConfig
from editthinker.models.parts import freeze, lora_target_names, parameter_parts, part_of
from editthinker.models.tiny_vlm import build_tiny_qwen3_thinker, build_tiny_thinker
from editthinker.training import accumulation_steps, prepare_model, trainer_settings

CFG = ThinkerModelConfig(hidden_size=64, num_layers=2, num_heads=4)


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("model.visual.blocks.0.attn.qkv.weight", "vision_tower"),  # Qwen2.5-VL / Qwen3-VL
        ("model.visual.merger.mlp.0.weight", "projector"),
        ("model.visual.deepstack_merger_list.0.linear_fc1.weight", "projector"),  # Qwen3-VL
        ("visual.merger.ln_q.weight", "projector"),  # the legacy key form of saved Qwen-VL weights
        ("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "vision_tower"),  # LLaVA-style
        ("model.multi_modal_projector.linear_1.weight", "projector"),
        ("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight", "language_model"),
        ("lm_head.weight", "language_model"),
        ("model.visualizer_head.weight", "language_model"),  # a name that only starts like one
    ],
)
def test_parts_are_found_by_name(name, part):
    assert part_of(name) == part


@pytest.mark.parametrize("build", [build_tiny_thinker, build_tiny_qwen3_thinker])
def test_each_family_has_all_three_parts_and_freezing_sets_requires_grad(build):
    model, _ = build(CFG, seed=1)
    parts = parameter_parts(model)
    assert all(parts[p] for p in parts), {p: len(v) for p, v in parts.items()}
    counts = freeze(model, {"vision_tower", "projector"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(parts["language_model"])
    assert counts["projector"] > 0 and counts["vision_tower"] > 0


def test_freezing_a_part_a_model_lacks_is_an_error():
    text_only = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no vision_tower parameters"):
        freeze(text_only, {"vision_tower"})


def test_lora_targets_only_the_layers_of_parts_that_train():
    model, _ = build_tiny_thinker(CFG, seed=1)
    lm_only = lora_target_names(model, ["gate_proj", "up_proj", "down_proj"], {"language_model"})
    both = lora_target_names(model, ["gate_proj", "up_proj", "down_proj"], {"language_model", "vision_tower"})
    assert lm_only and all(part_of(n) == "language_model" for n in lm_only)
    assert set(lm_only) < set(both)  # Qwen2.5-VL's vision MLP also has gate/up/down projections
    with pytest.raises(ValueError, match="match no linear layer"):
        lora_target_names(model, ["nope"], {"language_model"})
    cfg = SFTParams(freeze_vision_tower=True, freeze_projector=True, lora={"r": 4})
    peft_config = prepare_model(model, cfg)
    assert set(peft_config.target_modules) == set(lora_target_names(model, list(cfg.lora.target_modules),
                                                                    {"language_model"}))  # fmt: skip


def test_the_global_batch_sets_the_accumulation_for_the_launch():
    cfg = SFTParams(batch_size=4, global_batch_size=32)
    assert accumulation_steps(cfg, "sft", processes=8) == 1
    assert accumulation_steps(cfg, "sft", processes=1) == 8
    with pytest.raises(ValueError, match=r"sft.global_batch_size \(32\) is not a multiple"):
        accumulation_steps(cfg, "sft", processes=3)
    assert accumulation_steps(SFTParams(gradient_accumulation_steps=3), "sft", processes=8) == 3


def test_trainer_settings_follow_the_params(tmp_path):
    s = trainer_settings(SFTParams(max_steps=None, num_train_epochs=1, save_steps=0), "sft", tmp_path)
    assert s["max_steps"] == -1 and s["num_train_epochs"] == 1 and s["save_strategy"] == "no"
    s = trainer_settings(SFTParams(), "sft", tmp_path)  # the demo's
    assert (s["max_steps"], s["save_strategy"], s["save_steps"], s["save_total_limit"]) == (1000, "steps", 200, 2)
    assert s["lr_scheduler_type"] == "cosine" and s["output_dir"] == str(tmp_path)
    if not torch.cuda.is_available():
        assert s["use_cpu"] and not s["bf16"]
        with pytest.raises(ValueError, match="needs a GPU"):
            trainer_settings(SFTParams(precision="bf16"), "sft", tmp_path)


def test_vllm_is_asked_for_by_params_and_needs_the_package():
    from editthinker.stages.rl import vllm_settings

    assert vllm_settings(RLParams()) == {}
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="rl.use_vllm: the vllm package is not installed"):
            vllm_settings(RLParams(use_vllm=True))
    else:
        assert vllm_settings(RLParams(use_vllm=True))["use_vllm"] is True
    with pytest.raises(ValidationError, match="vllm_server_url"):
        RLParams(use_vllm=True, vllm_mode="server")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"sft": {"freeze_vision_tower": True, "freeze_projector": True, "freeze_language_model": True}},
         "nothing would train"),
        ({"sft": {"lora": {"r": 0}}}, "sft.lora.r"),
        ({"sft": {"lora": {"quantization": "2bit"}}}, "sft.lora.quantization"),
        ({"thinker": {"image_min_pixels": 5000, "image_max_pixels": 4000}}, "image_min_pixels must not exceed"),
        ({"thinker": {"base_model": " "}}, "base_model"),
        ({"rl": {"global_batch_size": 10, "num_generations": 4}}, "global_batch_size (10) must be a multiple"),
        ({"thinker": {"kind": "tiny-llava"}}, "thinker.kind"),
    ],
)  # fmt: skip
def test_training_params_are_validated(data, needle):
    with pytest.raises(ValidationError) as exc:
        Params.model_validate(data)
    assert needle in str(exc.value)
