"""Typed configuration: one pydantic model that mirrors params.yaml, validated once at start-up.

Unknown keys are errors (extra="forbid"), and every error names the offending key path. Types are strict
(pydantic strict mode): a bool is not a count, 3.0 or "3" is not an integer (an integer is a number, though);
constraints across fields (rl.batch_size and num_generations, the thinker's width and heads) are checked here
too, so a bad params file fails at load, before any stage spends time. An empty params file is an error.
Secrets never live here: API keys and credentials come from the environment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from editthinker.diffusers_pipelines import spec_for
from editthinker.world.tasks import STYLES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


class DiffusersEditorConfig(_Strict):
    """An in-process diffusers editor (backends.diffusers_editors); defaults per pipeline from its table."""

    name: str
    kind: Literal["diffusers"] = "diffusers"
    pipeline: str  # a key of backends.diffusers_editors.PIPELINES: flux-kontext, qwen-image-edit, ...
    model: str = ""  # hub id or local folder; "": the pipeline's real model id
    revision: str | None = None
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    batch_size: int = Field(1, ge=1)  # requests per pipeline call (pipelines that take a batch)
    num_inference_steps: int | None = Field(None, ge=1)  # None: the pipeline's default (method's setting)
    guidance: dict[str, float] = Field(default_factory=dict)  # overrides of the pipeline's guidance defaults
    negative_prompt: str | None = None  # for true-CFG pipelines
    width: int | None = Field(None, ge=8)  # output size; None: the source image's
    height: int | None = Field(None, ge=8)

    @model_validator(mode="after")
    def _known_pipeline(self) -> DiffusersEditorConfig:
        spec = spec_for(self.pipeline)
        unknown = sorted(set(self.guidance) - set(spec.guidance))
        if unknown:
            raise ValueError(f"guidance {unknown} not used by {self.pipeline}; it takes {sorted(spec.guidance)}")
        if self.cpu_offload != "none" and self.device == "cpu":
            raise ValueError("cpu_offload moves models to an accelerator as needed: set device (cuda, cuda:1, ...)")
        return self


class HttpEditorConfig(_Strict):
    """An editor behind `editthinker serve-editor` (or any service speaking its POST /edit)."""

    name: str
    kind: Literal["http"] = "http"
    url: str = Field(pattern=r"^https?://")
    model_id: str = ""  # "": the service's own, from GET /health
    timeout_s: float = Field(600.0, gt=0)
    retries: int = Field(2, ge=0)  # further attempts after a transport error or a 5xx answer
    backoff_s: float = Field(1.0, ge=0)  # wait before retry k: backoff_s * 2**k


class StandInEditorConfig(_Strict):
    """A stand-in editor for tests and benchmarks only (backends.stand_in): a seeded colour transform of the
    source image, not an edit. Never a real editor."""

    name: str
    kind: Literal["stand-in"] = "stand-in"
    compress_level: int = Field(1, ge=0, le=9)  # PNG zlib level of its outputs


EDITOR_KINDS = ("synthetic", "diffusers", "http", "stand-in")


def _editor_kind(v: Any) -> str:
    return str(v.get("kind", "synthetic") if isinstance(v, dict) else getattr(v, "kind", "synthetic"))


AnyEditorConfig = Annotated[
    Annotated[EditorConfig, Tag("synthetic")]
    | Annotated[DiffusersEditorConfig, Tag("diffusers")]
    | Annotated[HttpEditorConfig, Tag("http")]
    | Annotated[StandInEditorConfig, Tag("stand-in")],
    Discriminator(_editor_kind),
]


def _default_editors() -> list[AnyEditorConfig]:
    return [EditorConfig(name="painter", profile="painter"), EditorConfig(name="mover", profile="mover")]


_OPENAI_FIELDS = ("base_url", "model", "api_key_env", "timeout_s", "max_retries", "concurrency", "cache_dir",
                  "price_per_1k_input", "price_per_1k_output", "max_tokens", "temperature",
                  "response_format")  # fmt: skip


class OpenAIAPIConfig(_Strict):
    """An OpenAI-compatible chat API (GPT-4.1, a vLLM server, `transformers serve`), for `kind: openai`.

    The key is read from the environment variable NAMED by `api_key_env`; its value never appears in params,
    logs, caches or artifacts."""

    base_url: str = "https://api.openai.com/v1"
    model: str = ""
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(60.0, gt=0)  # per HTTP attempt
    max_retries: int = Field(4, ge=0)  # on 408/409/429/5xx, connection errors and timeouts, with backoff
    concurrency: int = Field(8, ge=1)  # requests in flight at once
    cache_dir: str = ".cache/openai"  # answers by sha256 of the request; "" disables the cache
    price_per_1k_input: float = Field(0.0, ge=0)  # USD per 1000 prompt tokens, for cost accounting
    price_per_1k_output: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"

    def _openai_fields_only_for_openai(self, kind: str, section: str) -> None:
        if kind != "openai":
            given = sorted(set(_OPENAI_FIELDS) & self.model_fields_set)
            if given:
                raise ValueError(f"{section}: {given} only apply to kind: openai")
        elif not self.model:
            raise ValueError(f"{section}: kind openai needs a model")


class ExpertConfig(OpenAIAPIConfig):
    # stand-in: tests and benchmarks only (backends/stand_in.py: asks for one rewrite, then is satisfied)
    kind: Literal["synthetic", "openai", "stand-in"] = "synthetic"
    error_rate: float = Field(0.05, ge=0, le=1)  # synthetic only

    @model_validator(mode="after")
    def _kind_fields(self) -> ExpertConfig:
        self._openai_fields_only_for_openai(self.kind, "expert")
        return self


class JudgeConfig(OpenAIAPIConfig):
    # stand-in: tests and benchmarks only (backends/stand_in.py: scores drawn from a hash of what it is shown)
    kind: Literal["synthetic", "openai", "stand-in"] = "synthetic"
    format_retries: int = Field(1, ge=0)  # openai: re-asks after an unparsable answer before the call fails

    @model_validator(mode="after")
    def _kind_fields(self) -> JudgeConfig:
        self._openai_fields_only_for_openai(self.kind, "judge")
        return self


class GenerateBudget(_Strict):
    """Limits on what generate spends on the expert's and the judge's APIs (null: no limit). Reaching one stops
    the run at a unit boundary, resumable: a rerun with a larger budget continues. Not part of the data's
    identity (a resume keys its finished units by the other generate params)."""

    max_cost: float | None = Field(None, ge=0)  # in the currency of the price params (price_per_1k_*)
    max_calls: int | None = Field(None, ge=0)  # calls answered by an API server (cache hits are free)


class GenerateConfig(_Strict):
    seed: int = 1234
    num_tasks: int = Field(2000, ge=1)  # split across the editors, as the method splits its sources
    max_turns: int = Field(5, ge=1, le=16)
    shards: int = Field(2, ge=1)
    # tasks per unit: the contiguous range of task indices written to disk as it finishes (what a rerun resumes)
    unit_tasks: int = Field(64, ge=1)
    # units generated at once: one unit's editing and judging overlap another's API waits. Memory holds this many
    # units' images; not part of the data's identity (the data are the same whatever it is)
    units_in_flight: int = Field(2, ge=1, le=16)
    budget: GenerateBudget = GenerateBudget()


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


THINKER_KINDS = ("tiny-qwen2.5-vl", "tiny-qwen3-vl")


class ThinkerModelConfig(_Strict):
    """The thinker being trained: what SFT starts from and RL continues. Inference-only settings live in
    `inference`.

    `base_model` names a pretrained image-text-to-text model (a hub id such as Qwen/Qwen3-VL-8B-Instruct, or a
    folder), loaded with from_pretrained (safetensors only); its family (Qwen2.5-VL, Qwen3-VL, ...) is read from
    its config. None builds the tiny offline thinker of `kind` from the sizes below (the demo); the sizes are
    ignored with a base model."""

    base_model: str | None = None
    revision: str | None = None  # a branch, tag or commit of base_model on the hub
    trust_remote_code: bool = False  # only for families transformers does not ship; off: no code runs from a model
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the base's weights when loaded for training
    # the image processor's pixel budget per image (Qwen-VL smart resize), saved with the checkpoint's processor;
    # None keeps the processor's own
    image_min_pixels: int | None = Field(None, ge=1)
    image_max_pixels: int | None = Field(None, ge=1)
    kind: Literal["tiny-qwen2.5-vl", "tiny-qwen3-vl"] = "tiny-qwen2.5-vl"  # the tiny thinker's family
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(8, ge=1)
    vocab_size: int = Field(640, ge=300)  # the world's language needs ~620 byte-level BPE tokens
    max_new_tokens: int = Field(96, ge=8)  # the answer's length cap, in training (RL completions) and at inference
    stop_semantic: float = 8.0  # the answer protocol: a score at or above both thresholds means "satisfied"
    stop_quality: float = 8.0
    vision_hidden_size: int = Field(64, ge=16)  # the ViT's width (its output is projected to hidden_size)
    vision_layers: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _sizes(self) -> ThinkerModelConfig:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of 2 * num_heads ({self.num_heads}): "
                "every head gets an even width (rotary embeddings)"
            )
        if self.vision_hidden_size % 4:
            raise ValueError(f"vision_hidden_size ({self.vision_hidden_size}) must be a multiple of 4 (2 heads, even)")
        return self

    @model_validator(mode="after")
    def _pixels(self) -> ThinkerModelConfig:
        if self.image_min_pixels and self.image_max_pixels and self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must not exceed image_max_pixels")
        if self.base_model is not None and not self.base_model.strip():
            raise ValueError("base_model: give a hub id or a folder, or null for the tiny offline thinker")
        return self


class InferenceConfig(_Strict):
    """How a trained or released thinker runs at inference (evaluate, edit). No training stage reads this
    section, so changing it never retrains."""

    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")  # "cpu", "cuda" or "cuda:N"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the weights' dtype
    batch_size: int = Field(32, ge=1)  # requests per generate() call
    # a released thinker to use instead of a trained checkpoint (a hub id such as Qwen/Qwen3-VL-8B-Instruct,
    # or a folder); read only by `editthinker edit --thinker model`
    thinker_model: str | None = None
    # the prompt and parser a VLM thinker uses. default: the prompt training used, strict parse. release: the
    # EditThinker release's prompt, `prompt_template` (a text file you supply, e.g. the release's
    # inference/prompt_template.txt, with two <image> tokens and the {original_instruction} and
    # {rewritten_prompt} placeholders; null: a built-in prompt in the release's layout). lenient: accept what
    # the release's reward parser accepts. Training rewards always parse strictly.
    prompt: Literal["default", "release"] = "default"
    prompt_template: str | None = None
    parse: Literal["strict", "lenient"] = "strict"

    @model_validator(mode="after")
    def _template_needs_release_prompt(self) -> InferenceConfig:
        if self.prompt_template is not None and self.prompt != "release":
            raise ValueError("prompt_template is only read with prompt: release")
        return self


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraParams(_Strict):
    """LoRA adapters (peft) instead of a full fine-tune; `quantization` 4bit/8bit makes it QLoRA (bitsandbytes,
    CUDA only). Adapters go on the linear layers named `target_modules` inside the parts that are not frozen
    (freeze_vision_tower / freeze_projector / freeze_language_model). The stage saves the merged model (what
    `VLMThinker` and the next stage load) and the adapter itself under `adapter/`."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)
    quantization: Literal["none", "4bit", "8bit"] = "none"


class TrainingParams(_Strict):
    """What the two training stages (sft, rl) share: schedule, batch, precision, what trains, checkpoints.

    Batch: `batch_size` per device x `gradient_accumulation_steps` x processes is the global batch; set
    `global_batch_size` instead of the accumulation to have it derived from the launch's process count."""

    max_steps: int | None = Field(None, ge=1)  # None: num_train_epochs over the data
    num_train_epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1)  # per device
    gradient_accumulation_steps: int = Field(1, ge=1)  # ignored when global_batch_size is set
    global_batch_size: int | None = Field(None, ge=1)  # set: accumulation = global / (batch_size x processes)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = False
    freeze_projector: bool = False
    freeze_language_model: bool = False
    lora: LoraParams | None = None  # None: full fine-tune of what is not frozen
    # resumable training: a checkpoint every save_steps optimizer steps (0: none), the newest save_total_limit kept;
    # a rerun with the same inputs and params resumes from the newest one
    save_steps: int = Field(200, ge=0)
    save_total_limit: int = Field(2, ge=1)
    seed: int = 0
    torch_threads: int = Field(1, ge=0)  # CPU threads for torch (0: torch's default); tiny batches gain nothing

    @model_validator(mode="after")
    def _what_trains(self) -> TrainingParams:
        if self.freeze_vision_tower and self.freeze_projector and self.freeze_language_model:
            raise ValueError("freeze_vision_tower, freeze_projector and freeze_language_model: nothing would train")
        return self


class SFTParams(TrainingParams):
    # a from-scratch tiny model learns to copy/rewrite instructions by number of updates, not batch size:
    # many small steps (~70-90 s on one CPU core for a few hundred samples)
    max_steps: int | None = Field(1000, ge=1)
    learning_rate: float = Field(4e-3, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(1e-6, ge=0)
    max_length: int | None = Field(None, ge=16)  # cutoff in tokens (prompt, image tokens and completion); None: none
    seed: int = 11


class RewardWeights(_Strict):
    format: float = 0.2
    critic: float = 0.3
    edit: float = 0.5


class RLSelectConfig(_Strict):
    """Which thinker the rl stage outputs: the model RL trained, or its SFT start when RL did worse on validation
    tasks (scenes of the world's training part and a seed of their own: never the held-out benchmark's), each
    task with every editor. RL stays unless its mean `metric` on the same items is below SFT's or more than
    `max_format_failure_rate` of its answers fail the format. Self-contained (no other stage's section decides),
    so the rl stage's cache key stays its own; the choice, its reasons and both models' figures are in the rl
    metrics (`selection`)."""

    num_tasks: int = Field(100, ge=1)  # validation tasks, each with every editor
    seed: int = 880001  # the validation world's seed
    max_turns: int = Field(5, ge=1)
    metric: Literal["overall", "semantic"] = "overall"
    max_format_failure_rate: float = Field(0.05, ge=0, le=1)


class RLParams(TrainingParams):
    """GRPO. `batch_size` (and `global_batch_size`) count completions: prompts x num_generations."""

    max_steps: int | None = Field(80, ge=1)  # ~30 s on one CPU core at batch 8 (2 prompts x 4 completions)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "linear"
    batch_size: int = Field(8, ge=1)
    num_generations: int = Field(4, ge=2)
    beta: float = Field(0.01, ge=0)  # KL coefficient: holds the policy near SFT (measured: 1e-3 at lr 5e-4 drifted)
    temperature: float = Field(1.0, gt=0)
    max_completion_length: int | None = Field(None, ge=8)  # None: thinker.max_new_tokens
    rewards: RewardWeights = RewardWeights()
    edit_metric: Literal["semantic", "overall"] = "semantic"  # E in R_edit = (E(new) - E(previous)) / 10
    # the edit reward's calls: the re-edits of a batch go to each editor as one call, with edit_timeout_s per edit
    # in it; the judge scores them concurrently, judge_timeout_s per call. A call over its time, or one that fails,
    # gives its completions the neutral edit reward and is counted in the rl metrics (the release: 70 s an edit)
    edit_timeout_s: float = Field(70.0, gt=0)
    judge_timeout_s: float = Field(70.0, gt=0)
    # generation with vLLM (trl's use_vllm; needs the vllm package and a GPU): colocate shares the training GPUs,
    # server talks to `trl vllm-serve` at vllm_server_url
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_server_url: str | None = None
    seed: int = 13
    select: RLSelectConfig | None = RLSelectConfig()  # null: output the model RL trained, unchecked

    @model_validator(mode="after")
    def _groups(self) -> RLParams:
        if self.global_batch_size is not None and self.global_batch_size % self.num_generations:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of num_generations "
                f"({self.num_generations})"
            )
        if self.use_vllm and self.vllm_mode == "server" and not self.vllm_server_url:
            raise ValueError("vllm_mode server needs vllm_server_url (where `trl vllm-serve` listens)")
        return self

    @model_validator(mode="after")
    def _whole_groups(self) -> RLParams:
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations}): "
                "a step takes whole groups of completions"
            )
        return self


class EvaluateConfig(_Strict):
    seed: int = 990_001  # no training data uses this world seed
    num_tasks: int = Field(200, ge=1)
    max_turns: int = Field(5, ge=1, le=16)
    success_semantic: float = 8.0  # an edit succeeds with semantic and quality at or above these
    success_quality: float = 8.0


class PromoteConfig(_Strict):
    # a local directory, or s3://bucket/prefix for a registry on S3 (endpoint and region from `s3`, credentials
    # from the environment; versions, numbers, champion and decisions change there only by conditional writes)
    registry: str = "registry"
    primary_metric: Literal["success_rate", "overall", "semantic"] = "overall"
    # the challenger must beat the editor alone and the champion on the same items: the lower end of the paired
    # interval (challenger - other) at `confidence` must lie above `margin`
    margin: float = Field(0.0, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    max_format_failure_rate: float = Field(0.05, ge=0, le=1)  # share of the thinker's answers that do not parse

    @field_validator("registry")
    @classmethod
    def _registry_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError('must name a directory or an s3:// URI ("" would make the current directory the registry)')
        return v


BENCHMARK_NAMES = ("gedit", "imgedit", "risebench", "kris")
SYSTEM_KINDS: tuple[Literal["editor", "thinker", "expert"], ...] = ("editor", "thinker", "expert")


class BenchmarkJudgeConfig(OpenAIAPIConfig):
    """The judge of the public benchmarks' scorers: always an OpenAI-compatible API (GPT-4.1 / GPT-4o, or an
    open judge behind vLLM). `model` empty: each benchmark's own default (`<benchmark>.judge_model`)."""

    concurrency: int = Field(16, ge=1)
    cache_dir: str = ".cache/benchmark-judge"
    max_tokens: int = Field(1000, ge=1)
    response_format: Literal["json_schema", "json_object", "none"] = "none"  # the protocols ask for plain text
    format_retries: int = Field(1, ge=0)  # re-asks after an unparsable answer; then the score is missing


class BenchmarkDataConfig(_Strict):
    data: str = ""  # where the benchmark lives as distributed (a folder, a JSON file, or for GEdit a hub id)
    judge_model: str  # the judge model its official scripts call


class GEditConfig(BenchmarkDataConfig):
    judge_model: str = "gpt-4.1"
    language: Literal["en", "cn"] = "en"


class KrisConfig(BenchmarkDataConfig):
    judge_model: str = "gpt-4o"
    # multi-element_composition gives 3 source images; single-image editors get them side by side
    multi_image: Literal["side_by_side", "exclude"] = "side_by_side"


class BenchmarkGateConfig(_Strict):
    """Promotion also needs the challenger's thinker to beat the champion on this benchmark metric."""

    benchmark: Literal["gedit", "imgedit", "risebench", "kris"] = "gedit"
    metric: str = "overall"  # a key of the benchmark's metrics (gedit: overall/semantic/quality, ...)
    editor: str = ""  # the editor whose runs count; "": the only editor benchmarked
    margin: float = Field(0.0, ge=0)


class BenchmarksConfig(_Strict):
    """ImgEdit-Bench, GEdit-Bench, RISEBench and KRIS-Bench: runs, judge and the promotion gate."""

    judge: BenchmarkJudgeConfig = BenchmarkJudgeConfig()
    max_turns: int = Field(5, ge=1, le=16)  # the method's default
    seed: int = 0  # editor seed, fixed for every item (method: 0)
    batch_size: int = Field(8, ge=1)  # items run through the loop in lockstep
    bootstrap_resamples: int = Field(1000, ge=0)  # 95% intervals over items; 0: none
    bootstrap_seed: int = 0
    editors: list[str] = Field(default_factory=list)  # editors the pipeline steps benchmark; []: all
    systems: list[Literal["editor", "thinker", "expert"]] = Field(default_factory=lambda: [*SYSTEM_KINDS])
    gedit: GEditConfig = GEditConfig()
    imgedit: BenchmarkDataConfig = BenchmarkDataConfig(judge_model="gpt-4o")
    risebench: BenchmarkDataConfig = BenchmarkDataConfig(judge_model="gpt-4.1-2025-04-14")
    kris: KrisConfig = KrisConfig()
    gate: BenchmarkGateConfig | None = None  # None: promotion does not look at the benchmarks


class S3Config(_Strict):
    """Where artifacts and the DVC remote live on S3 (or an S3-compatible store). No credentials here: boto3
    and DVC take them from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)."""

    endpoint_url: str | None = None  # None: AWS itself; e.g. http://minio:9000 for an S3-compatible store
    bucket: str = ""
    prefix: str = "editthinker"  # every key lives under <prefix>/
    region: str = "us-east-1"

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, v: str) -> str:
        return v.strip("/")


SOURCE_KINDS = ("synthetic", "jsonl", "csv", "imagefolder", "parquet", "arrow", "hf")


class SourceColumns(_Strict):
    """Which of a source's columns hold what: the image (a path, local or s3://, or bytes), the instruction, and
    optionally the row's own id and task type."""

    image: str = "image"
    instruction: str = "instruction"
    id: str | None = None
    task_type: str | None = None


class SourceConfig(_Strict):
    """One user-declared source of editing tasks (editthinker.sources). `path`: a folder, a file, an s3:// URI,
    or (kind hf) a Hugging Face dataset id with a pinned `revision`, or a `save_to_disk` folder."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["synthetic", "jsonl", "csv", "imagefolder", "parquet", "arrow", "hf"]
    path: str = ""
    revision: str | None = None  # hf: the pinned revision (commit sha or tag) of a hub dataset
    split: str = "train"  # hf: the split to read
    image_root: str = ""  # jsonl/csv: the folder (or s3:// prefix) relative image paths start from; "": the file's
    columns: SourceColumns = SourceColumns()
    limit: int | None = Field(None, ge=1)  # at most this many tasks (a seeded, order-independent choice)
    weight: float = Field(1.0, gt=0)  # share of prepare.num_tasks when several sources are mixed
    seed: int = 1234  # synthetic: the world seed
    num_tasks: int = Field(2000, ge=1)  # synthetic: how many world tasks

    @model_validator(mode="after")
    def _where(self) -> SourceConfig:
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"kind {self.kind} needs a path")
        if self.kind == "synthetic" and self.path:
            raise ValueError("kind synthetic reads no path (it renders the world)")
        return self


def _default_sources() -> list[SourceConfig]:
    return [SourceConfig(name="world", kind="synthetic")]


class PrepareConfig(_Strict):
    """How `editthinker prepare` normalises source images: RGB, at most `max_pixels` (aspect kept), sides
    rounded down to a multiple of `size_multiple`; smaller than `min_side` is quarantined."""

    max_pixels: int = Field(1024 * 1024, ge=64)
    min_side: int = Field(16, ge=1)
    size_multiple: int = Field(16, ge=1)
    num_tasks: int | None = Field(None, ge=1)  # mix the sources by weight to this many tasks; None: all of them
    seed: int = 0  # the seeded choice of limits and mixing
    rows_per_shard: int = Field(1000, ge=1)
    images_per_shard: int = Field(256, ge=1)


PIPELINE_STEPS = (
    "generate", "gather", "filter", "split", "validate", "sft", "rl", "evaluate", "benchmark", "challenge", "promote",
)  # fmt: skip
_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class StepResources(_Strict):
    """One pipeline step's pod: accelerator, cpu / memory (Kubernetes quantities; "" leaves it unset)."""

    accelerator_type: str = ""  # e.g. nvidia.com/gpu; "" asks for none
    accelerator_count: int = Field(0, ge=0)
    cpu_request: str = Field("", pattern=r"^(([0-9]*[.])?[0-9]+m?)?$")
    cpu_limit: str = Field("", pattern=r"^(([0-9]*[.])?[0-9]+m?)?$")
    memory_request: str = Field("", pattern=r"^([0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?)?$")
    memory_limit: str = Field("", pattern=r"^([0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?)?$")
    timeout_s: int = Field(0, ge=0)  # the pod's activeDeadlineSeconds; 0: none
    retries: int = Field(0, ge=0)
    # sft / rl with accelerator_count > 1 run under `accelerate launch` with configs/accelerate/<this>.yaml
    accelerate_config: Literal["zero3", "fsdp"] = "zero3"

    @model_validator(mode="after")
    def _accelerator(self) -> StepResources:
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("accelerator_type and accelerator_count > 0 go together")
        return self

    @property
    def gpu(self) -> bool:
        return self.accelerator_count > 0


_STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "generate": {"cpu_request": "1", "memory_request": "2Gi", "timeout_s": 7200, "retries": 1},
    "gather": {"cpu_request": "1", "memory_request": "2Gi", "timeout_s": 1800, "retries": 1},
    "filter": {"cpu_request": "1", "memory_request": "2Gi", "timeout_s": 1800, "retries": 1},
    "split": {"cpu_request": "1", "memory_request": "2Gi", "timeout_s": 1800, "retries": 1},
    "validate": {"cpu_request": "1", "memory_request": "2Gi", "timeout_s": 1800, "retries": 1},
    "sft": {"cpu_request": "2", "memory_request": "4Gi", "timeout_s": 14400},
    "rl": {"cpu_request": "2", "memory_request": "4Gi", "timeout_s": 14400},
    "evaluate": {"cpu_request": "2", "memory_request": "4Gi", "timeout_s": 7200, "retries": 1},
    # a public benchmark (one step per benchmark with data in params.benchmarks): its editor, thinker and judge
    "benchmark": {"cpu_request": "2", "memory_request": "8Gi", "timeout_s": 21600, "retries": 1},
    "challenge": {"cpu_request": "250m", "memory_request": "512Mi", "timeout_s": 600, "retries": 1},
    "promote": {"cpu_request": "500m", "memory_request": "1Gi", "timeout_s": 1800},
}


class Toleration(_Strict):
    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class VolumeMount(_Strict):
    pvc: str = Field("", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")  # PVC name; "" mounts nothing
    mount_path: str = Field("/mnt/volume", pattern=r"^/")


class SecretEnv(_Strict):
    """A Kubernetes Secret exposed as env vars: names only, the values stay in the cluster."""

    secret_name: str = Field(pattern=_K8S_NAME)
    env: dict[str, str] = Field(min_length=1)  # ENV_VAR: key in the secret
    steps: list[str] = Field(default_factory=list)  # steps that get it; empty: every step

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"not environment variable names: {bad}")
        return v


def _merge_steps(given: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: dict(v) for k, v in _STEP_DEFAULTS.items()}
    for name, value in given.items():
        if name in merged and isinstance(value, dict):
            merged[name].update(value)
        else:
            merged[name] = value  # an unknown step: reported by the model validator
    return merged


class KubernetesConfig(_Strict):
    """How the KFP pipelines run on a cluster, applied at compile time (pipelines/platform.py). The defaults
    fit a CPU-only run; a GPU cluster sets accelerators on the model steps. Steps with an accelerator use
    `gpu_image` and get the node selector and tolerations."""

    image: str = "editthinker-factory:cpu"
    gpu_image: str = ""  # "": `image`
    image_pull_policy: Literal["", "Always", "IfNotPresent", "Never"] = ""  # "": the cluster's default
    # per step; a step given in params.yaml is merged key by key over its default here
    steps: dict[str, StepResources] = Field(default_factory=dict, validate_default=True)
    node_selector: dict[str, str] = Field(default_factory=dict)  # for accelerator steps
    tolerations: list[Toleration] = Field(default_factory=list)  # for accelerator steps
    model_cache: VolumeMount = VolumeMount(mount_path="/cache/models")  # HF_HOME on the model steps
    model_cache_steps: list[str] = Field(default_factory=lambda: ["generate", "sft", "rl", "evaluate"])
    registry: VolumeMount = VolumeMount(mount_path="/registry")  # the model registry, for challenge and promote
    retry_backoff_s: int = Field(60, ge=0)
    generate_parallelism: int = Field(0, ge=0)  # generation shards running at once; 0: all of them
    secrets: list[SecretEnv] = Field(default_factory=list)

    @field_validator("steps", mode="before")
    @classmethod
    def _fill_steps(cls, v: Any) -> Any:
        return _merge_steps(v) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _known_steps(self) -> KubernetesConfig:
        named = set(self.steps).union(self.model_cache_steps, *(s.steps for s in self.secrets))
        unknown = sorted(named - set(PIPELINE_STEPS))
        if unknown:
            raise ValueError(f"unknown steps {unknown}; known: {list(PIPELINE_STEPS)}")
        return self

    def step(self, name: str) -> StepResources:
        return self.steps[name]

    def image_for(self, name: str) -> str:
        return (self.gpu_image or self.image) if self.step(name).gpu else self.image


class Params(_Strict):
    world: WorldConfig = WorldConfig()
    editors: list[AnyEditorConfig] = Field(default_factory=lambda: _default_editors())
    expert: ExpertConfig = ExpertConfig()
    judge: JudgeConfig = JudgeConfig()
    generate: GenerateConfig = GenerateConfig()
    filter: FilterConfig = FilterConfig()
    split: SplitConfig = SplitConfig()
    thinker: ThinkerModelConfig = ThinkerModelConfig()
    inference: InferenceConfig = InferenceConfig()
    sft: SFTParams = SFTParams()
    rl: RLParams = RLParams()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    benchmarks: BenchmarksConfig = BenchmarksConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    s3: S3Config = S3Config()
    sources: list[SourceConfig] = Field(default_factory=lambda: _default_sources())
    prepare: PrepareConfig = PrepareConfig()

    @model_validator(mode="after")
    def _check(self) -> Params:
        if not self.editors:
            raise ValueError("editors: at least one editor is needed")
        names = [e.name for e in self.editors]
        if len(set(names)) != len(names):
            raise ValueError(f"editors: names must be unique, got {names}")
        unknown = sorted(set(self.benchmarks.editors) - set(names))
        if unknown:
            raise ValueError(f"benchmarks.editors: {unknown} are not in editors {names}")
        gate = self.benchmarks.gate
        if gate is not None and gate.editor and gate.editor not in names:
            raise ValueError(f"benchmarks.gate.editor: {gate.editor!r} is not in editors {names}")
        source_names = [s.name for s in self.sources]
        if len(set(source_names)) != len(source_names):
            raise ValueError(f"sources: names must be unique, got {source_names}")
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


Key = tuple[str, ...]


def _source_of(loc: Key, sources: dict[Key, str]) -> str | None:
    """The layer that set `loc` or the nearest key above it (a whole mapping set by one layer)."""
    for i in range(len(loc), 0, -1):
        if loc[:i] in sources:
            return sources[loc[:i]]
    return None


def _format_errors(exc: ValidationError, sources: dict[Key, str] | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) > 2 and loc[0] == "editors" and loc[2] in EDITOR_KINDS:
            del loc[2]  # the editor kind's tag, not a key
        key = ".".join(loc) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        if err["type"].endswith("_type"):  # a strict-type error: say what was given
            msg += f" (got {err['input']!r})"
        where = _source_of(tuple(loc), sources) if sources else None
        lines.append(f"  {key}: {msg}" + (f" (from {where})" if where else ""))
    return "\n".join(lines)


def parse_params(data: dict[str, Any] | None, source: str = "params", sources: dict[Key, str] | None = None) -> Params:
    """Validate one mapping of params; `sources` (key path -> the file or --set that gave it) adds where each
    offending key came from to the error."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}:\n{_format_errors(exc, sources)}") from None


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-4 or 1.0e6 as strings, which strict types would refuse."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not data:
        raise ConfigError(f"{path} is empty: a params file names at least one section (all defaults: `world: {{}}`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _record(value: Any, at: Key, source: str, sources: dict[Key, str]) -> None:
    sources[at] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record(v, (*at, str(k)), source, sources)


def merge_layer(base: dict[str, Any], layer: dict[str, Any], source: str, sources: dict[Key, str],
                at: Key = ()) -> dict[str, Any]:  # fmt: skip
    """`layer` over `base`: mappings merge key by key, anything else (scalars, lists) is replaced whole."""
    out = dict(base)
    for k, v in layer.items():
        key = (*at, str(k))
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_layer(out[k], v, source, sources, key)
        else:
            out[k] = v
            _record(v, key, source, sources)
    return out


def parse_override(text: str) -> tuple[Key, Any]:
    """`a.b.c=value` -> (("a", "b", "c"), value); the value is read as YAML (1e-5, true, null, [a, b], {k: v})."""
    key, sep, raw = text.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. sft.learning_rate=1e-5")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {exc}") from None
    return parts, value


def _nested(key: Key, value: Any, data: dict[str, Any], text: str) -> dict[str, Any]:
    """`value` at `key` as a layer over `data`; a numeric part indexes a list already there (editors.0.device)."""
    head, rest = key[0], key[1:]
    if not rest:
        return {head: value}
    current = data.get(head) if isinstance(data, dict) else None
    if isinstance(current, list):
        if not rest[0].isdigit() or int(rest[0]) >= len(current):
            raise ConfigError(f"--set {text}: {head} is a list of {len(current)}; index it as {head}.0 .. {head}.N")
        items = list(current)
        i = int(rest[0])
        if len(rest) == 1:
            items[i] = value
        else:
            if not isinstance(items[i], dict):
                raise ConfigError(f"--set {text}: {head}.{i} is not a mapping")
            items[i] = merge_layer(items[i], _nested(rest[1:], value, items[i], text), "", {})
        return {head: items}
    if current is not None and not isinstance(current, dict):
        raise ConfigError(f"--set {text}: {head} is a value, not a mapping of keys")
    return {head: _nested(rest, value, current or {}, text)}


def merge_params(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> tuple[dict[str, Any], dict[Key, str]]:
    """The params files in order, then each `--set KEY=VALUE`, later over earlier; with the layer that set each
    key (for error messages)."""
    data: dict[str, Any] = {}
    sources: dict[Key, str] = {}
    for path in paths:
        data = merge_layer(data, _read_yaml(Path(path)), str(path), sources)
    for text in overrides:
        key, value = parse_override(text)
        data = merge_layer(data, _nested(key, value, data, text), f"--set {text}", sources)
    return data, sources


def load_params(*paths: str | Path, overrides: Sequence[str] = ()) -> Params:
    """Params from one or more files layered in order (a recipe over params.yaml), then `overrides` (KEY=VALUE,
    dotted keys) over them; validated as one model. The stages hash the merged result for lineage."""
    data, sources = merge_params(paths, overrides)
    layers = [str(p) for p in paths] + (["--set"] if overrides else [])
    return parse_params(data, " + ".join(layers) or "params", sources if len(layers) > 1 else None)


def params_yaml(params: Params, section: str | None = None) -> str:
    """Validated params as YAML: what `editthinker params show` prints, and a file that loads back to the same
    params. Every key with its value, defaults included, but the API settings of a role that is not `kind: openai`
    (which refuses them)."""
    full = params.model_dump(mode="json")
    given = params.model_dump(mode="json", exclude_unset=True)
    if section is not None and section not in full:
        raise ConfigError(f"no params section {section!r}; sections: {list(full)}")
    data: dict[str, Any] = {}
    for name in [section] if section is not None else list(full):
        value = full[name]
        if isinstance(value, dict) and value.get("kind") != "openai" and set(_OPENAI_FIELDS) <= set(value):
            value = {k: v for k, v in value.items() if k not in _OPENAI_FIELDS}  # a synthetic role's own keys
        try:
            Params.model_validate({name: value})
            data[name] = value
        except ValidationError:
            if name in given:
                data[name] = given[name]
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)
