"""Typed params: defaults validate, the shipped params.yaml validates, and errors name the key."""

from pathlib import Path

import pytest

from editthinker.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_yaml_validates_and_matches_model_fields():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert set(p.model_dump()) == set(Params.model_fields)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"generate": {"num_taks": 5}}, "generate.num_taks: unknown key"),
        ({"generat": {}}, "generat: unknown key"),
        ({"sft": {"learning_rate": "fast"}}, "sft.learning_rate"),
        ({"evaluate": {"num_tasks": 0}}, "evaluate.num_tasks"),
        ({"world": {"styles": {"poetic": 1.0}}}, "world.styles"),
        ({"editors": [{"name": "x", "profile": "painter", "colour": 1}]}, "editors.0.colour: unknown key"),
        ({"evaluate": {"seed": 5}, "generate": {"seed": 5}}, "evaluate.seed must differ"),
    ],
)
def test_errors_name_the_offending_key(data, needle):
    with pytest.raises(ConfigError) as exc:
        parse_params(data)
    assert needle in str(exc.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("generate: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_section_hash_tracks_only_its_sections():
    a, b = Params(), parse_params({"sft": {"max_steps": 3}})
    assert a.section_hash("generate") == b.section_hash("generate")
    assert a.section_hash("sft") != b.section_hash("sft")


# -- checked whole at load: strict types, cross-field constraints, no empty file --------------------------------
@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"generate": {"num_tasks": True}}, "generate.num_tasks: Input should be a valid integer (got True)"),
        ({"generate": {"num_tasks": 3.0}}, "generate.num_tasks: Input should be a valid integer (got 3.0)"),
        ({"sft": {"batch_size": "4"}}, "sft.batch_size: Input should be a valid integer (got '4')"),
        ({"rl": {"temperature": True}}, "rl.temperature: Input should be a valid number (got True)"),
        ({"filter": {"keep_accepted_single_turn": 1}}, "filter.keep_accepted_single_turn: Input should be a valid"),
        ({"rl": {"batch_size": 6}}, "rl: batch_size (6) must be a multiple of num_generations (4)"),
        ({"rl": {"batch_size": 8, "num_generations": 3}}, "rl: batch_size (8) must be a multiple of num_generations"),
        ({"thinker": {"num_heads": 3}}, "thinker: hidden_size (128) must be a multiple of 2 * num_heads (3)"),
        ({"thinker": {"hidden_size": 120, "num_heads": 8}}, "thinker: hidden_size (120) must be a multiple"),
        ({"thinker": {"vision_hidden_size": 66}}, "thinker: vision_hidden_size (66) must be a multiple of 4"),
        ({"promote": {"registry": ""}}, "promote.registry: must name a directory"),
        ({"promote": {"registry": "  "}}, "promote.registry: must name a directory"),
    ],
)
def test_types_and_constraints_across_fields_fail_at_load_naming_the_key(data, needle):
    with pytest.raises(ConfigError) as exc:
        parse_params(data)
    assert needle in str(exc.value)


def test_integers_are_numbers_and_yaml_floats_without_a_dot_are_floats(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(
        "sft: {learning_rate: 1e-4, weight_decay: 0}\nrl: {learning_rate: 5.0e-4, batch_size: 6, num_generations: 3}\n"
    )
    params = load_params(p)
    assert params.sft.learning_rate == 1e-4 and params.sft.weight_decay == 0.0
    assert params.rl.learning_rate == 5e-4 and params.rl.batch_size == 6


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n"])
def test_an_empty_params_file_is_an_error(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"{p} is empty"):
        load_params(p)


def test_the_cli_refuses_bad_params_before_any_stage_runs(tmp_path):
    from typer.testing import CliRunner

    from editthinker.cli import app

    p = tmp_path / "p.yaml"
    p.write_text("generate: {num_tasks: true}\n")
    r = CliRunner().invoke(app, ["generate", "--params", str(p), "--out", str(tmp_path / "traj")])
    assert r.exit_code == 2 and "generate.num_tasks" in r.output
    assert not (tmp_path / "traj").exists()
