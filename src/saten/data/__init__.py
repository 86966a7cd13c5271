"""Datasets and metrics.

Importing this package registers the OmegaConf resolver ``saten.glue_dir`` used by ``conf/data/glue.yaml``:
``${saten.glue_dir:${paths.data_dir}}`` gives ``$GLUE_DIR`` when set, else ``<data_dir>/glue``, else null
(the hub dataset ``nyu-mll/glue``). Import ``saten.data`` before resolving a config that uses it.
"""

from omegaconf import OmegaConf

from saten.data.glue_tasks import glue_dir_resolver

OmegaConf.register_new_resolver("saten.glue_dir", glue_dir_resolver, replace=True, use_cache=False)

__all__ = ["glue_dir_resolver"]
