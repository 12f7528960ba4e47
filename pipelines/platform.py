"""Cluster settings for a pipeline task, from params.yaml's `kubernetes` section, in one place.

`apply(task, step, k8s)` is called once per task by the pipeline builders (pipelines/factory.py): image,
accelerator, cpu / memory, retries and caching on the task; node selector, tolerations, PVC mounts, secrets
as env (by name: values stay in the cluster), image pull policy and the pod timeout through kfp-kubernetes
(the platform spec). kfp.local ignores all of it. Steps that mount the model cache also keep the expert/judge
answer cache there ($EDITTHINKER_ANSWER_CACHE), so it outlives the pod. `training_launch` gives a training
step's launch inputs (one process, or `accelerate launch` over its GPUs).
"""

from __future__ import annotations

from typing import Any

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components import IMAGE_CONFIGS
from editthinker.backends.openai_api import ANSWER_CACHE_ENV
from editthinker.config import KubernetesConfig
from editthinker.launch import accelerate_config_file

UNCACHED = frozenset({"challenge", "promote"})  # read or write the registry: outside state, never cached
REGISTRY_STEPS = ("challenge", "promote")
TRAINING_STEPS = ("sft", "rl")
CHECKPOINT_ROOT_ENV = "EDITTHINKER_CHECKPOINT_ROOT"  # editthinker.training reads it (not imported: it loads torch)
ANSWER_CACHE_FOLDER = "editthinker-answers"  # under the model cache's mount path


def answer_cache_root(k8s: KubernetesConfig) -> str:
    """Where a step that mounts the model-cache PVC keeps the expert/judge answers ("" without a PVC)."""
    return f"{k8s.model_cache.mount_path.rstrip('/')}/{ANSWER_CACHE_FOLDER}" if k8s.model_cache.pvc else ""


def training_launch(k8s: KubernetesConfig, step: str) -> dict[str, Any]:
    """The launch inputs of a training step (sft, rl), fixed at compile time: one process, or as many as the
    step's accelerator_count under `accelerate launch` with the image's configs/accelerate/<accelerate_config>."""
    s = k8s.step(step)
    if s.accelerator_count <= 1:
        return {"num_processes": 1, "accelerate_config": ""}
    config = accelerate_config_file(IMAGE_CONFIGS, s.accelerate_config)
    return {"num_processes": s.accelerator_count, "accelerate_config": config.as_posix()}


def apply(task: PipelineTask, step: str, k8s: KubernetesConfig) -> PipelineTask:
    """Set `step`'s settings from `k8s` on `task` (a task of that step's component); return the task."""
    s = k8s.step(step)
    task.set_caching_options(enable_caching=step not in UNCACHED)
    task.set_container_image(k8s.image_for(step))
    if k8s.image_pull_policy:
        kubernetes.set_image_pull_policy(task, k8s.image_pull_policy)
    if s.gpu:
        task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(s.accelerator_count)
        for label, value in sorted(k8s.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=label, label_value=value)
        for t in k8s.tolerations:
            kubernetes.add_toleration(
                task, key=t.key or None, operator=t.operator, value=t.value or None, effect=t.effect or None
            )
    if s.cpu_request:
        task.set_cpu_request(s.cpu_request)
    if s.cpu_limit:
        task.set_cpu_limit(s.cpu_limit)
    if s.memory_request:
        task.set_memory_request(s.memory_request)
    if s.memory_limit:
        task.set_memory_limit(s.memory_limit)
    if s.timeout_s:
        kubernetes.set_timeout(task, s.timeout_s)
    if s.retries:
        task.set_retry(s.retries, backoff_duration=f"{k8s.retry_backoff_s}s")
    if k8s.model_cache.pvc and step in k8s.model_cache_steps:
        kubernetes.mount_pvc(task, pvc_name=k8s.model_cache.pvc, mount_path=k8s.model_cache.mount_path)
        task.set_env_variable("HF_HOME", k8s.model_cache.mount_path)
        task.set_env_variable(ANSWER_CACHE_ENV, answer_cache_root(k8s))
        if step in TRAINING_STEPS:  # a retried training step resumes from its checkpoints on the volume
            task.set_env_variable(CHECKPOINT_ROOT_ENV, f"{k8s.model_cache.mount_path.rstrip('/')}/checkpoints")
    if k8s.registry.pvc and step in REGISTRY_STEPS:
        kubernetes.mount_pvc(task, pvc_name=k8s.registry.pvc, mount_path=k8s.registry.mount_path)
    for secret in k8s.secrets:
        if not secret.steps or step in secret.steps:
            for var, key in sorted(secret.env.items()):  # one entry each: two vars may read one key
                kubernetes.use_secret_as_env(task, secret_name=secret.secret_name, secret_key_to_env={key: var})
    return task
