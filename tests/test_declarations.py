"""One declaration per stage (editthinker.stages.SECTIONS) drives dvc.yaml, lineage and the KFP steps' params;
these tests fail when any of them drifts from it. Also: params.yaml equals the pydantic defaults, and no import
circle or stage-to-stage import exists."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from editthinker.config import Params, load_params
from editthinker.lineage import PACKAGE_ROOT, module_files
from editthinker.stages import SECTIONS, STAGES, sections_of, stage_params
from stage_declarations import REPO, code_files, compressed, covered

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# a changed value for every section, valid on its own
CHANGES = {
    "world": {"image_size": 72},
    "editors": [{"name": "painter", "kind": "synthetic", "profile": "painter"}],
    "expert": {"error_rate": 0.2},
    "judge": {"format_retries": 3},
    "generate": {"num_tasks": 7},
    "filter": {"single_turn_min_overall": 7.0},
    "split": {"seed": 8},
    "thinker": {"vocab_size": 700},
    "inference": {"batch_size": 3},
    "sft": {"max_steps": 5},
    "rl": {"max_steps": 5, "select": {"num_tasks": 3, "max_turns": 2}},
    "evaluate": {"num_tasks": 9},
    "promote": {"margin": 0.5},
    "kubernetes": {"image": "other:tag"},
    "s3": {"bucket": "b"},
    "benchmarks": {"max_turns": 3},
    "sources": [{"name": "mine", "kind": "jsonl", "path": "data/mine.jsonl"}],
    "prepare": {"max_pixels": 4096},
}


def test_changes_cover_every_section() -> None:
    assert set(CHANGES) == set(Params.model_fields)


def test_params_yaml_equals_the_pydantic_defaults() -> None:
    """params.yaml is the documented default: a user who deletes a key gets the value it showed."""
    assert load_params(REPO / "params.yaml").model_dump(mode="json") == Params().model_dump(mode="json")


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_params_are_the_declared_sections(stage: str) -> None:
    assert set(DVC) == set(STAGES)
    assert DVC[stage]["params"] == list(SECTIONS[stage])


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_code_deps_are_exactly_what_the_stage_imports(stage: str) -> None:
    code = [d for d in DVC[stage]["deps"] if d.startswith("src/")]
    expected = code_files(stage)
    assert covered(code) == expected, f"dvc.yaml {stage} deps should be {compressed(expected)}"
    assert PACKAGE_ROOT / "stages" / f"{stage}.py" in expected


def test_module_files_follow_imports_inside_functions() -> None:
    files = {p.relative_to(PACKAGE_ROOT).as_posix() for p in module_files("editthinker.stages.rl")}
    assert {"rewards.py", "training.py", "backends/factory.py", "backends/http_editor.py"} <= files
    assert "stages/sft.py" not in files and "registry.py" not in files
    with pytest.raises(ValueError, match="not a module"):
        module_files("editthinker.nothing_here")


@pytest.mark.parametrize("stage", STAGES)
def test_a_step_params_change_only_with_the_sections_its_stage_reads(stage: str) -> None:
    base = Params()
    before = json.dumps(stage_params(base, stage), sort_keys=True)
    for section, value in CHANGES.items():
        changed = Params.model_validate({section: value})
        after = json.dumps(stage_params(changed, stage), sort_keys=True)
        assert (after != before) is (section in sections_of(stage)), (stage, section)
        hash_moves = changed.section_hash(*sections_of(stage)) != base.section_hash(*sections_of(stage))
        assert hash_moves is (section in sections_of(stage)), (stage, section)


def test_inference_settings_do_not_retrain_and_a_judge_change_does() -> None:
    assert "inference" not in sections_of("sft") and "inference" not in sections_of("rl")
    assert "inference" in sections_of("evaluate")
    assert {"judge", "editors", "world", "thinker"} <= set(sections_of("rl"))


def test_each_stage_passes_its_declared_sections_to_its_lineage() -> None:
    for stage in STAGES:
        source = (PACKAGE_ROOT / "stages" / f"{stage}.py").read_text()
        if "make_lineage" in source or "save_checkpoint" in source:
            assert f'sections_of("{stage}")' in source, stage


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_stages_never_import_each_other() -> None:
    for stage in STAGES:
        others = {f"editthinker.stages.{s}" for s in STAGES if s != stage}
        assert not _imports(PACKAGE_ROOT / "stages" / f"{stage}.py") & others, stage


def test_no_import_circle_in_the_package() -> None:
    """Module-level and function-level imports alike: no module reaches itself again."""
    modules = {
        ".".join(("editthinker", *p.relative_to(PACKAGE_ROOT).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in PACKAGE_ROOT.rglob("*.py")
    }
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}

    def reaches(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    # a package's __init__ is imported by its own modules' imports: only modules of other packages count
    circles = [m for m in graph if m in reaches(m) and PACKAGE_ROOT.joinpath("__init__.py") != modules[m]]
    assert not circles, f"import circles through {sorted(circles)}"


def test_nothing_edits_sys_path() -> None:
    for folder in ("src", "pipelines", "components", "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            if path == Path(__file__):
                continue
            text = path.read_text()
            assert "sys.path.insert" not in text and "sys.path.append" not in text, path
            assert "sys.path[:0]" not in text and 'environ["PYTHONPATH"]' not in text, path
