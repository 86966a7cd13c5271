"""saten: sparse augmented tensor networks for post-training compression of transformers."""

from saten.accounting import layer_counts, model_report
from saten.compress import compress, find_targets, parameter_groups
from saten.config import SatenConfig, TTShapeConfig
from saten.embedding import SatenEmbedding
from saten.export import export
from saten.export_io import load_exported, save_exported
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
    "export",
    "find_targets",
    "layer_counts",
    "load_exported",
    "model_report",
    "parameter_groups",
    "save_exported",
    "tt_svd",
]
__version__ = "0.1.0"
