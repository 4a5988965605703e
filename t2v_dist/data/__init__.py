"""Shard loading: tar shards -> seeded, resumable streams of token-budget PackedBatch."""
from t2v_dist.data.config import DataConfig
from t2v_dist.data.loader import ShardLoader
from t2v_dist.data.records import ERROR_REASONS
from t2v_dist.data.shardlist import expand_shards

__all__ = ["DataConfig", "ShardLoader", "ERROR_REASONS", "expand_shards"]
