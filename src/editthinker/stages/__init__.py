"""The factory's stages, in run order, and the params sections each one reads: declared once, here.

A stage's sections are what its outputs depend on. Everything that needs them takes them from `SECTIONS`:
the stage's lineage (params hash), dvc.yaml's `params:` (a test holds them equal), and the params a KFP
component receives (`stage_params`), so a pipeline step's cache key changes only when a section it reads
changes. The code a stage runs is derived from its imports (`lineage.module_files`), not written by hand.

This module stays light (no stage is imported here): the pipeline compiler and the CLI read it cheaply.
"""

from __future__ import annotations

from typing import Any

from editthinker.config import Params

SECTIONS: dict[str, tuple[str, ...]] = {
    "generate": ("world", "editors", "expert", "judge", "generate"),
    "filter": ("filter",),
    "split": ("split",),
    "validate": ("world", "editors"),
    "sft": ("thinker", "sft"),
    # the edit reward re-edits with the editors (world: image size) and scores with the judge
    "rl": ("world", "editors", "judge", "thinker", "rl"),
    "evaluate": ("world", "editors", "expert", "judge", "thinker", "inference", "evaluate"),
    # the benchmark's identity (world, editors, judge, evaluate) decides whether two evaluations compare;
    # s3 says where an s3:// registry lives
    "promote": ("world", "editors", "judge", "evaluate", "promote", "s3"),
}
STAGES: tuple[str, ...] = tuple(SECTIONS)


def sections_of(stage: str) -> tuple[str, ...]:
    """The params sections `stage` reads."""
    try:
        return SECTIONS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGES)}") from None


def module_of(stage: str) -> str:
    """The module that holds `stage`'s run function."""
    sections_of(stage)
    return f"{__name__}.{stage}"


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The params `stage` receives as a pipeline step: its sections only, with the keys params set.

    Only set keys: a section may refuse keys its `kind` does not use, which a dump of every field would give
    it; the step's defaults are the same package's defaults. Sections it does not read stay out, so a change
    to them leaves the step's cache key alone."""
    dump = params.model_dump(mode="json", exclude_unset=True)
    return {k: dump[k] for k in sections_of(stage) if k in dump}
