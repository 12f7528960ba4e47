"""Typed configuration: one pydantic model that mirrors params.yaml, validated once at start-up.

Unknown keys are errors (extra="forbid"), and every error names the offending key path.
Secrets never live here: API keys and credentials come from the environment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(_Strict):
    image_size: int = Field(64, ge=48, le=512)
    min_shapes: int = Field(2, ge=1, le=9)
    max_shapes: int = Field(4, ge=1, le=9)
    styles: dict[str, float] = Field(
        default_factory=lambda: {"canonical": 0.15, "paraphrase": 0.3, "relative": 0.2, "indirect": 0.2, "vague": 0.15}
    )

    @field_validator("styles")
    @classmethod
    def _known_styles(cls, v: dict[str, float]) -> dict[str, float]:
        from editthinker.world.tasks import STYLES

        unknown = sorted(set(v) - set(STYLES))
        if unknown:
            raise ValueError(f"unknown instruction styles {unknown}; known: {list(STYLES)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("style weights must be non-negative and not all zero")
        return v

    @model_validator(mode="after")
    def _shape_range(self) -> WorldConfig:
        if self.min_shapes > self.max_shapes:
            raise ValueError("min_shapes must not exceed max_shapes")
        return self


class EditorConfig(_Strict):
    name: str
    kind: Literal["synthetic"] = "synthetic"
    profile: str  # a synthetic editor's skill profile, from backends.editors.PROFILES


class ExpertConfig(_Strict):
    kind: Literal["synthetic"] = "synthetic"
    error_rate: float = Field(0.05, ge=0, le=1)


class JudgeConfig(_Strict):
    kind: Literal["synthetic"] = "synthetic"


class GenerateConfig(_Strict):
    seed: int = 1234
    num_tasks: int = Field(600, ge=1)  # split across the editors, as the method splits its sources
    max_turns: int = Field(5, ge=1, le=16)
    shards: int = Field(2, ge=1)


class FilterConfig(_Strict):
    # The method's rule max(S_t, t>1) >= S_1 says nothing of a trajectory with one edit. We keep those
    # whose first edit the expert accepted: they teach the thinker when to stop.
    keep_accepted_single_turn: bool = True
    single_turn_min_overall: float = Field(8.0, ge=0, le=10)  # ... and whose edit the judge scores this well


class SplitConfig(_Strict):
    rl_variance_threshold: float = Field(4.0, ge=0)  # Var(S_t) above this makes a trajectory an RL candidate
    rl_max_fraction: float = Field(0.3, ge=0, le=1)  # at most this share of trajectories goes to RL (method: 10K/70K)
    balance_max_group_ratio: float = Field(3.0, ge=1)  # cap each (op, score band) group at ratio x median
    seed: int = 7


class ThinkerModelConfig(_Strict):
    kind: Literal["tiny-qwen2.5-vl"] = "tiny-qwen2.5-vl"
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(8, ge=1)
    vocab_size: int = Field(640, ge=300)  # the world's language needs ~620 byte-level BPE tokens
    max_new_tokens: int = Field(96, ge=8)
    stop_semantic: float = 8.0
    stop_quality: float = 8.0
    infer_batch_size: int = Field(32, ge=1)  # requests per generate() call at inference
    vision_hidden_size: int = Field(64, ge=16)  # the ViT's width (its output is projected to hidden_size)
    vision_layers: int = Field(1, ge=1)


class SFTConfig(_Strict):
    # a from-scratch tiny model learns to copy/rewrite instructions by number of updates, not batch size:
    # many small steps (~70-90 s on one CPU core for a few hundred samples)
    max_steps: int = Field(1000, ge=1)
    learning_rate: float = Field(4e-3, gt=0)
    batch_size: int = Field(4, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(1e-6, ge=0)
    seed: int = 11
    torch_threads: int = Field(1, ge=0)  # CPU threads for torch (0: torch's default); tiny batches gain nothing


class RewardWeights(_Strict):
    format: float = 0.2
    critic: float = 0.3
    edit: float = 0.5


class RLConfig(_Strict):
    max_steps: int = Field(50, ge=1)  # ~20 s on one CPU core at batch 8 (2 prompts x 4 completions)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    num_generations: int = Field(4, ge=2)
    beta: float = Field(1e-3, ge=0)  # KL coefficient
    temperature: float = Field(1.0, gt=0)
    rewards: RewardWeights = RewardWeights()
    edit_metric: Literal["semantic", "overall"] = "semantic"  # E in R_edit = (E(new) - E(previous)) / 10
    seed: int = 13
    torch_threads: int = Field(1, ge=0)  # CPU threads for torch (0: torch's default)


class EvaluateConfig(_Strict):
    seed: int = 990_001  # no training data uses this world seed
    num_tasks: int = Field(200, ge=1)
    max_turns: int = Field(5, ge=1, le=16)
    success_semantic: float = 8.0  # an edit succeeds with semantic and quality at or above these
    success_quality: float = 8.0


class PromoteConfig(_Strict):
    registry: str = "registry"
    primary_metric: Literal["success_rate", "overall", "semantic"] = "overall"
    margin: float = Field(0.0, ge=0)


class Params(_Strict):
    world: WorldConfig = WorldConfig()
    editors: list[EditorConfig] = Field(
        default_factory=lambda: [
            EditorConfig(name="painter", profile="painter"),
            EditorConfig(name="mover", profile="mover"),
        ]
    )
    expert: ExpertConfig = ExpertConfig()
    judge: JudgeConfig = JudgeConfig()
    generate: GenerateConfig = GenerateConfig()
    filter: FilterConfig = FilterConfig()
    split: SplitConfig = SplitConfig()
    thinker: ThinkerModelConfig = ThinkerModelConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()

    @model_validator(mode="after")
    def _check(self) -> Params:
        if not self.editors:
            raise ValueError("editors: at least one editor is needed")
        names = [e.name for e in self.editors]
        if len(set(names)) != len(names):
            raise ValueError(f"editors: names must be unique, got {names}")
        if self.evaluate.seed == self.generate.seed:
            raise ValueError("evaluate.seed must differ from generate.seed (the benchmark is held out)")
        return self

    def section_hash(self, *sections: str) -> str:
        """sha256 of the named sections (all when none): what a stage's outputs depend on."""
        d = self.model_dump(mode="json")
        picked = {k: d[k] for k in (sections or tuple(d))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


class ConfigError(ValueError):
    """A params file that does not validate; the message names every offending key."""


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(data: dict[str, Any] | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}:\n{_format_errors(exc)}") from None


def load_params(path: str | Path) -> Params:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {p}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return parse_params(data, str(p))
