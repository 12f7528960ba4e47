"""Params in layers: params.yaml, recipe overlays, then --set, later wins; validated as one model, errors naming the
key and the layer it came from; hashed after merging; `params show`; the recipes themselves; the same layers for
the KFP compile command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from editthinker.cli import app
from editthinker.config import ConfigError, Params, load_params, parse_override

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
runner = CliRunner()


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_later_layers_win_and_mappings_merge_key_by_key(tmp_path):
    a = _write(tmp_path / "a.yaml", {"sft": {"learning_rate": 0.1, "batch_size": 2}, "rl": {"max_steps": 9}})
    b = _write(tmp_path / "b.yaml", {"sft": {"learning_rate": 0.2}})
    p = load_params(PARAMS, a, b, overrides=["sft.seed=5", "rl.rewards.edit=0.7"])
    assert p.sft.learning_rate == 0.2  # b over a
    assert p.sft.batch_size == 2 and p.rl.max_steps == 9  # a's other keys stay
    assert p.sft.seed == 5 and p.rl.rewards.edit == 0.7 and p.rl.rewards.format == 0.2  # --set over all files
    assert p.sft.max_length is None and p.generate == Params().generate  # untouched: params.yaml's
    assert load_params(PARAMS, a, b, overrides=["sft.learning_rate=1e-5"]).sft.learning_rate == 1e-5
    assert load_params(PARAMS, b, a).sft.learning_rate == 0.1  # order decides


def test_lists_are_replaced_whole_and_indexed_by_set(tmp_path):
    one = _write(tmp_path / "one.yaml", {"editors": [{"name": "solo", "profile": "painter"}]})
    assert [e.name for e in load_params(PARAMS, one).editors] == ["solo"]
    p = load_params(PARAMS, overrides=["editors.1.profile=painter"])
    assert [(e.name, e.profile) for e in p.editors] == [("painter", "painter"), ("mover", "painter")]
    with pytest.raises(ConfigError, match="editors is a list of 2"):
        load_params(PARAMS, overrides=["editors.5.profile=painter"])


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("sft.learning_rate=1e-5", ("sft", "learning_rate"), 1e-5),
        ("thinker.base_model=Qwen/Qwen3-VL-8B-Instruct", ("thinker", "base_model"), "Qwen/Qwen3-VL-8B-Instruct"),
        ("thinker.base_model=", ("thinker", "base_model"), None),
        ("sft.lora={r: 8, alpha: 16}", ("sft", "lora"), {"r": 8, "alpha": 16}),
        ("rl.use_vllm=true", ("rl", "use_vllm"), True),
    ],
)
def test_set_values_are_yaml(text, key, value):
    assert parse_override(text) == (key, value)


def test_errors_name_the_key_and_the_layer_it_came_from(tmp_path):
    recipe = _write(tmp_path / "recipe.yaml", {"sft": {"learnin_rate": 0.1}})
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS, recipe)
    assert f"sft.learnin_rate: unknown key (from {recipe})" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS, overrides=["rl.max_step=3"])
    assert "rl.max_step: unknown key (from --set rl.max_step=3)" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS, recipe, overrides=["sft.batch_size=0"])
    assert "sft.batch_size" in str(exc.value) and "(from --set sft.batch_size=0)" in str(exc.value)
    for bad in ("sft.learning_rate", "=3", "sft..seed=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_override(bad)
    with pytest.raises(ConfigError, match="not a mapping"):
        load_params(PARAMS, overrides=["sft.seed.x=1"])


def test_the_hash_is_of_the_merged_params(tmp_path):
    recipe = _write(tmp_path / "r.yaml", {"sft": {"learning_rate": 0.1}})
    layered = load_params(PARAMS, recipe)
    same = Params.model_validate({"sft": {"learning_rate": 0.1}})
    assert layered.section_hash("sft") == same.section_hash("sft") != Params().section_hash("sft")
    assert layered.section_hash("generate") == Params().section_hash("generate")
    assert load_params(PARAMS, overrides=["sft.learning_rate=0.1"]).section_hash() == layered.section_hash()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates_over_params_yaml_and_tiny_restores_the_demo(recipe):
    p = load_params(PARAMS, recipe)
    assert isinstance(p, Params)
    layers = [recipe] if recipe.name != "qwen3-vl-8b-qlora.yaml" else [ROOT / "recipes/qwen3-vl-8b-lora.yaml", recipe]
    assert load_params(PARAMS, *layers, ROOT / "recipes/tiny.yaml") == Params()


def test_the_method_recipe_says_what_the_method_does():
    p = load_params(PARAMS, ROOT / "recipes/qwen3-vl-8b.yaml")
    t, s, r = p.thinker, p.sft, p.rl
    assert t.base_model == "Qwen/Qwen3-VL-8B-Instruct" and t.dtype == "bfloat16" and t.image_max_pixels == 1024 * 1024
    assert (s.learning_rate, s.lr_scheduler, s.warmup_ratio, s.weight_decay) == (2e-5, "cosine", 0.1, 1e-6)
    assert (s.max_steps, s.num_train_epochs, s.precision, s.global_batch_size, s.max_length) == (
        None, 1, "bf16", 32, 16384)  # fmt: skip
    assert s.freeze_vision_tower and s.freeze_projector and not s.freeze_language_model and s.lora is None
    assert (r.learning_rate, r.num_generations, r.beta, r.temperature, r.max_completion_length) == (
        2e-6, 8, 1e-3, 1.0, 4096)  # fmt: skip
    assert r.global_batch_size == 128 * 8  # 128 prompts x 8 generations
    lora = load_params(PARAMS, ROOT / "recipes/qwen3-vl-8b-lora.yaml", ROOT / "recipes/qwen3-vl-8b-qlora.yaml")
    assert lora.sft.lora is not None and lora.sft.lora.quantization == "4bit"


def test_params_show_prints_yaml_that_loads_back_the_same(tmp_path):
    args = ["params", "show", "--params", str(PARAMS), "--params", str(ROOT / "recipes/qwen3-vl-8b.yaml"),
            "--set", "sft.learning_rate=1e-5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.stdout)
    expected = load_params(PARAMS, ROOT / "recipes/qwen3-vl-8b.yaml", overrides=["sft.learning_rate=1e-5"])
    assert load_params(shown) == expected and expected.sft.learning_rate == 1e-5
    section = runner.invoke(app, [*args, "--section", "sft"])
    assert section.exit_code == 0 and set(yaml.safe_load(section.stdout)) == {"sft"}
    assert runner.invoke(app, [*args, "--section", "nope"]).exit_code == 2
    bad = runner.invoke(app, ["params", "show", "--params", str(PARAMS), "--set", "sft.nope=1"])
    assert bad.exit_code == 2 and "sft.nope: unknown key" in bad.output


def test_pipeline_compile_takes_the_same_layers(tmp_path):
    pytest.importorskip("kfp")
    from pipelines.cli import app as pipeline_app

    overlay = _write(tmp_path / "gpu.yaml", {"kubernetes": {"image": "registry.example.com/et:overlay"}})
    result = runner.invoke(pipeline_app, ["compile", "--params", str(PARAMS), "--params", str(overlay),
                                          "--set", "kubernetes.image=registry.example.com/et:set",
                                          "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "editthinker-factory.yaml").read_text()
    assert "registry.example.com/et:set" in text and "et:overlay" not in text


def test_the_pipeline_training_steps_keep_their_checkpoints_on_the_model_cache_volume(tmp_path):
    pytest.importorskip("kfp")
    from editthinker.training import CHECKPOINT_ROOT_ENV
    from pipelines.cli import app as pipeline_app

    out = tmp_path / "out"
    result = runner.invoke(pipeline_app, ["compile", "--params", str(PARAMS), "--set", "kubernetes.model_cache.pvc=hf",
                                          "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    executors = yaml.safe_load((out / "editthinker-factory.yaml").read_text().split("\n---\n")[0])
    env = {name: {e["name"]: e.get("value") for e in ex["container"].get("env", [])}
           for name, ex in executors["deploymentSpec"]["executors"].items()}  # fmt: skip
    assert env["exec-sft"][CHECKPOINT_ROOT_ENV] == env["exec-rl"][CHECKPOINT_ROOT_ENV] == "/cache/models/checkpoints"
    assert CHECKPOINT_ROOT_ENV not in env["exec-evaluate"] and CHECKPOINT_ROOT_ENV not in env["exec-generate-shard"]
