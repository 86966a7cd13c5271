"""GLUE for saten: task registry, split reader, DataModule and submission writer (one import point).

>>> from saten.data.glue import TASKS, read_split
>>> TASKS["rte"].label_names
('entailment', 'not_entailment')
"""

from saten.data.glue_module import GlueDataModule
from saten.data.glue_predictions import write_glue_predictions
from saten.data.glue_reader import read_split
from saten.data.glue_tasks import HUB_DATASET, TASKS, GlueTask, get_task, resolve_glue_dir

__all__ = ["HUB_DATASET", "TASKS", "GlueDataModule", "GlueTask", "get_task", "read_split", "resolve_glue_dir",
           "write_glue_predictions"]
