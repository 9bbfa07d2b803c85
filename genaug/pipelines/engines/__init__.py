"""Engines: where a job's scoring runs when the data is Parquet.

* `local` (`genaug.pipelines.engines.local`): this process, streaming the
  input in aligned shards with bounded memory.
* `ray` (`genaug.pipelines.engines.ray`): Ray Data `map_batches` over the
  shards, in an actor pool (one actor per GPU where there are GPUs), on a
  local Ray or a cluster. Needs `pip install 'genaug[ray]'`.

Both score shards with `shards.score_batch` and hand the scored shards, in
input order, to `collect.write_detection`, which gathers the per-image
scores, calibrates and flags them over all images at once
(`genaug.detect.calibrate_and_flag`) and writes the output row group by row
group. The output is the in-memory job's, value for value.
"""

ENGINES = ("local", "ray")
