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
    # s3 says where an s3:// registry lives; benchmarks.gate adds a public benchmark's metric to the rule
    "promote": ("world", "editors", "judge", "evaluate", "promote", "s3", "benchmarks"),
}
STAGES: tuple[str, ...] = tuple(SECTIONS)
# pipeline steps that are no stage of `editthinker run` (their code lives elsewhere) but receive params the same way
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    **SECTIONS,
    # a public benchmark (editthinker.benchmarks.step): editors (world: image size), the expert and the trained
    # thinker as systems, its own judge and data in `benchmarks`
    "benchmark": ("world", "editors", "expert", "thinker", "inference", "benchmarks"),
}


def sections_of(step: str) -> tuple[str, ...]:
    """The params sections a stage (or another pipeline step) reads."""
    try:
        return STEP_SECTIONS[step]
    except KeyError:
        raise ValueError(f"unknown stage {step!r}; stages: {list(STEP_SECTIONS)}") from None


def module_of(stage: str) -> str:
    """The module that holds `stage`'s run function."""
    if stage not in SECTIONS:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
    return f"{__name__}.{stage}"


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The params `stage` (or another step) receives in a pipeline: its sections only, with the keys params set.

    Only set keys: a section may refuse keys its `kind` does not use, which a dump of every field would give
    it; the step's defaults are the same package's defaults. Sections it does not read stay out, so a change
    to them leaves the step's cache key alone."""
    dump = params.model_dump(mode="json", exclude_unset=True)
    return {k: dump[k] for k in sections_of(stage) if k in dump}
