"""Trajectory data: episodes, storage layouts (the paper's per-episode files and lram's packed layout),
importers, generators and the multi-domain window sampler."""

from lram.data.episode import FIELDS, DataError, Episode, returns_to_go, validate_episode

__all__ = ["FIELDS", "DataError", "Episode", "returns_to_go", "validate_episode"]
