"""Trajectory data: episodes, storage layouts (the paper's per-episode files and lram's packed layout),
importers, generators and the multi-domain window sampler."""

from lram.data.episode import FIELDS, DataError, Episode, returns_to_go, validate_episode
from lram.data.storage import PackedWriter, PaperWriter, TaskData, open_dataset, open_task

__all__ = ["FIELDS", "DataError", "Episode", "PackedWriter", "PaperWriter", "TaskData", "open_dataset", "open_task",
           "returns_to_go", "validate_episode"]
