"""One small registry per role: params name a backend, these functions build it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editthinker.backends.synthetic import SyntheticEditor, SyntheticExpert, SyntheticJudge
from editthinker.config import (
    AnyEditorConfig,
    DiffusersEditorConfig,
    ExpertConfig,
    HttpEditorConfig,
    InferenceConfig,
    JudgeConfig,
    Params,
    StandInEditorConfig,
    ThinkerModelConfig,
)
from editthinker.roles import Editor, Judge, Thinker


def build_editor(cfg: AnyEditorConfig, image_size: int) -> Editor:
    if isinstance(cfg, DiffusersEditorConfig):
        from editthinker.backends.diffusers_editors import DiffusersEditor

        return DiffusersEditor(cfg)
    if isinstance(cfg, HttpEditorConfig):
        from editthinker.backends.http_editor import HttpEditor

        return HttpEditor(cfg.name, cfg.url, cfg.model_id, cfg.timeout_s, cfg.retries, cfg.backoff_s)
    if isinstance(cfg, StandInEditorConfig):
        from editthinker.backends.stand_in import StandInEditor

        return StandInEditor(cfg.name, cfg.compress_level)
    if cfg.kind == "synthetic":
        return SyntheticEditor(cfg.name, cfg.profile, image_size)
    raise ValueError(f"editors: unknown editor kind {cfg.kind!r}")


def close_roles(*roles: Any) -> None:
    """Close the roles that hold connections (API clients, HTTP editors); the others have nothing to close."""
    for role in roles:
        close = getattr(role, "close", None)
        if callable(close):
            close()


def build_editors(params: Params) -> dict[str, Editor]:
    return {e.name: build_editor(e, params.world.image_size) for e in params.editors}


def build_expert(cfg: ExpertConfig, seed: int) -> Thinker:
    if cfg.kind == "synthetic":
        return SyntheticExpert(cfg.error_rate, seed)
    if cfg.kind == "openai":
        from editthinker.backends.openai_api import OpenAIExpert

        return OpenAIExpert(cfg)
    if cfg.kind == "stand-in":
        from editthinker.backends.stand_in import StandInExpert

        return StandInExpert()
    raise ValueError(f"expert: unknown expert kind {cfg.kind!r}")


def build_judge(cfg: JudgeConfig) -> Judge:
    if cfg.kind == "synthetic":
        return SyntheticJudge()
    if cfg.kind == "openai":
        from editthinker.backends.openai_api import OpenAIJudge

        return OpenAIJudge(cfg)
    if cfg.kind == "stand-in":
        from editthinker.backends.stand_in import StandInJudge

        return StandInJudge()
    raise ValueError(f"judge: unknown judge kind {cfg.kind!r}")


def load_vlm_thinker(checkpoint: Path | str, cfg: ThinkerModelConfig, inference: InferenceConfig) -> Thinker:
    """A VLM thinker: a checkpoint folder or a model id (from_pretrained, safetensors only), with cfg's decoding
    length and stop thresholds, run with inference's device, dtype and batch size."""
    from editthinker.backends.vlm_thinker import VLMThinker

    return VLMThinker(checkpoint, cfg, inference)
