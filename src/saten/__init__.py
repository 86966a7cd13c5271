"""saten: sparse augmented tensor networks for post-training compression of transformers."""

from saten.accounting import layer_counts, model_report
from saten.compress import compress, find_targets, parameter_groups
from saten.config import SatenConfig, TTShapeConfig
from saten.embedding import SatenEmbedding
from saten.layers import SatenLinear
from saten.lowrank import SVDLinear
from saten.tt import TTShape, balanced_shape, tt_svd

__all__ = [
    "SVDLinear",
    "SatenConfig",
    "SatenEmbedding",
    "SatenLinear",
    "TTShape",
    "TTShapeConfig",
    "balanced_shape",
    "compress",
    "find_targets",
    "layer_counts",
    "model_report",
    "parameter_groups",
    "tt_svd",
]
__version__ = "0.1.0"
