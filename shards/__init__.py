"""Shard building for t2v-dist: the `t2v-shards` CLI (`shards.cli`) and its parts.

- `synthetic`: the moving-shapes generator and its vocabulary (COLOURS, SHAPES, DIRECTIONS);
- `synthetic_source`, `video_sources`, `wds_source`: input kinds (see `source.Source`);
- `video`: PyAV decoding, clip cutting, centre crop + area resize;
- `build`: shard assignment, parallel and incremental building; `writer`: the tar + stats files;
- `stats`: summarising and verifying a shard folder.
"""
