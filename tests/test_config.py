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
