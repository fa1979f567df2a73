"""FID and Inception Score: statistics (`stats`), sharded Inception features (`features`), tfds references (`data`).

Pipeline: images -> `to_uint8` -> `InceptionV3` (jitted, batch sharded over the 'data' axis of the
project mesh) -> host float64 running sums (`FeatureStats`, `ISState`) -> (mu, sigma) and IS ->
`frechet_distance` against EDM-format `.npz` reference statistics. Every public name is
re-exported here: `from di_jax.eval import fid; fid.compute_fid(...)`.
"""

from di_jax.eval.fid.data import stats_from_tfds, tfds_batches, tfds_builder
from di_jax.eval.fid.features import FeatureFn, accumulate, compute_fid, make_feature_fn, to_uint8
from di_jax.eval.fid.stats import (
                                   FeatureStats,
                                   FidError,
                                   ISState,
                                   frechet_distance,
                                   inception_score,
                                   is_finalize,
                                   is_init,
                                   is_update,
                                   load_stats,
                                   save_stats,
                                   stats_finalize,
                                   stats_init,
                                   stats_update,
)

__all__ = ["FidError", "FeatureFn", "FeatureStats", "ISState", "accumulate", "compute_fid", "frechet_distance",
           "inception_score", "is_finalize", "is_init", "is_update", "load_stats", "make_feature_fn", "save_stats",
           "stats_finalize", "stats_from_tfds", "stats_init", "stats_update", "tfds_batches", "tfds_builder",
           "to_uint8"]
