"""The synthetic world as a source: its tasks, each source scene rendered to PNG."""

from __future__ import annotations

from collections.abc import Iterator

from editthinker.config import SourceConfig, WorldConfig
from editthinker.sources.rows import RawRow
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task


def synthetic_rows(cfg: SourceConfig, world: WorldConfig) -> Iterator[RawRow]:
    for i in range(cfg.num_tasks):
        task = make_task(cfg.seed, i, world.min_shapes, world.max_shapes, world.styles)
        png = render_png(task.source, world.image_size)
        yield RawRow(
            cfg.name,
            i,
            task.task_id,
            png,
            None,
            task.instruction,
            task.task_id,
            task.op.op,
            task.target.to_json(),
            task.metadata(),
        )
