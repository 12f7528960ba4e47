"""What dvc.yaml must say about each stage, from the one declaration (stages.SECTIONS) and the stage's imports.

`python tests/stage_declarations.py` prints the `deps:` and `params:` of every stage; `--write` rewrites them in
dvc.yaml (data deps, the first entries that are not package files, are kept). tests/test_declarations.py fails
until dvc.yaml agrees.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from editthinker.lineage import PACKAGE_ROOT, module_files
from editthinker.stages import SECTIONS, STAGES, module_of

REPO = PACKAGE_ROOT.parents[1]


def code_files(stage: str) -> set[Path]:
    """The package files `stage` runs (its module and everything it imports)."""
    return set(module_files(module_of(stage)))


def covered(deps: list[str]) -> set[Path]:
    """The package's .py files that dvc.yaml `deps` entries cover (a folder covers every file under it)."""
    out: set[Path] = set()
    for d in deps:
        path = REPO / d
        if path.is_dir():
            out.update(p for p in path.rglob("*.py") if p.is_relative_to(PACKAGE_ROOT))
        elif path.suffix == ".py":
            out.add(path)
    return out


def compressed(files: set[Path]) -> list[str]:
    """`files` as dvc deps: a folder where every .py file under it is in `files`, else the files."""
    folders = sorted(
        {d for f in files for d in f.parents if d.is_relative_to(PACKAGE_ROOT) and d != PACKAGE_ROOT},
        key=lambda d: len(d.parts),
    )
    whole: list[Path] = []
    for d in folders:
        if set(d.rglob("*.py")) <= files and not any(d.is_relative_to(w) for w in whole):
            whole.append(d)
    loose = [f for f in files if not any(f.is_relative_to(w) for w in whole)]
    return sorted(str(p.relative_to(REPO)) for p in [*whole, *loose])


def _yaml_list(key: str, items: list[str]) -> str:
    flow = f"    {key}: [{', '.join(items)}]"
    return flow if len(flow) <= 118 else "\n".join([f"    {key}:", *(f"      - {i}" for i in items)])


def rewrite_dvc_yaml(path: Path) -> None:
    """Set each declared stage's `params:` and code `deps:` in dvc.yaml, keeping its data deps and the rest."""
    import yaml

    stages = yaml.safe_load(path.read_text())["stages"]
    blocks = re.split(r"(?m)^(?=  [\w-]+:\n)", path.read_text())
    for i, block in enumerate(blocks):
        m = re.match(r"  ([\w-]+):\n", block)
        if not m or m.group(1) not in SECTIONS:
            continue
        stage = m.group(1)
        data = [d for d in stages[stage].get("deps", []) if not d.startswith("src/")]
        deps = _yaml_list("deps", data + compressed(code_files(stage)))
        block = re.sub(r"(?ms)^    deps:.*?(?=^    \w)", deps + "\n", block, count=1)
        blocks[i] = re.sub(r"(?m)^    params:.*\n", _yaml_list("params", list(SECTIONS[stage])) + "\n", block, count=1)
    path.write_text("".join(blocks))


if __name__ == "__main__":
    if "--write" in sys.argv:
        rewrite_dvc_yaml(REPO / "dvc.yaml")
    for stage in STAGES:
        print(f"{stage}:\n  params: [{', '.join(SECTIONS[stage])}]\n  code: {compressed(code_files(stage))}")
