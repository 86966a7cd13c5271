"""The nine GLUE tasks: file layout, label ids and metrics, plus where the data lives.

Label ids follow the Hugging Face hub dataset ``nyu-mll/glue`` so that local TSV files and the hub give
identical examples (e.g. RTE/QNLI ``entailment=0, not_entailment=1``; MNLI ``entailment=0, neutral=1,
contradiction=2``; WNLI ``not_entailment=0, entailment=1``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from saten.errors import ConfigError

HUB_DATASET = "nyu-mll/glue"
HUB_SENTINEL = "hub"

_STANDARD_SPLITS = MappingProxyType({"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"})


@dataclass(frozen=True)
class GlueTask:
    """Static description of one GLUE task.

    Attributes
    ----------
    name : str
        Lower-case task name, also the ``task.name`` config value (``"mrpc"``).
    dir : str
        Folder of the task inside a GLUE data directory (``"MRPC"``).
    text_keys : tuple of str
        Text fields of an example, named as in the hub dataset (``("sentence1", "sentence2")``).
    num_labels : int
        Number of classes; 1 for the regression task STS-B.
    label_names : tuple of str
        Class names in label-id order (empty for STS-B).
    metric : str
        Key of the main metric in :func:`saten.data.metrics.glue_metrics` output.
    splits : Mapping[str, str]
        Split name (hub naming) to TSV file name inside ``dir``.
    hub_config : str
        Config name of the task in the hub dataset ``nyu-mll/glue``.
    text_columns : tuple of str
        TSV column holding each of ``text_keys``.
    label_column : str
        TSV column holding the label (absent in test files).
    submission_files : Mapping[str, str]
        Test split to the file name the GLUE leaderboard expects.
    headerless_columns : tuple of str
        Column names given to files that have no header row (CoLA train/dev); empty otherwise.
    headerless_splits : frozenset of str
        Splits whose files have no header row.
    """

    name: str
    dir: str
    text_keys: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric: str
    splits: Mapping[str, str]
    hub_config: str
    text_columns: tuple[str, ...]
    label_column: str
    submission_files: Mapping[str, str]
    headerless_columns: tuple[str, ...] = ()
    headerless_splits: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_regression(self) -> bool:
        """True for STS-B (one float label)."""
        return self.num_labels == 1

    @property
    def train_split(self) -> str:
        """Name of the training split."""
        return "train"

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Labelled evaluation splits (``validation``; MNLI: matched and mismatched)."""
        return tuple(s for s in self.splits if s.startswith("validation"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        """Unlabelled test splits (``test``; MNLI: ``test_matched``, ``test_mismatched``)."""
        return tuple(s for s in self.splits if s.startswith("test"))


def _task(name, dir, text_keys, label_names, metric, text_columns=None, label_column="label",
          **kw) -> GlueTask:
    splits = kw.pop("splits", _STANDARD_SPLITS)
    submission = kw.pop("submission_files", {"test": f"{dir}.tsv"})
    return GlueTask(
        name=name, dir=dir, text_keys=tuple(text_keys), num_labels=max(len(label_names), 1),
        label_names=tuple(label_names), metric=metric, splits=MappingProxyType(dict(splits)),
        hub_config=name, text_columns=tuple(text_columns or text_keys), label_column=label_column,
        submission_files=MappingProxyType(dict(submission)), **kw,
    )


TASKS: Mapping[str, GlueTask] = MappingProxyType({
    "cola": _task("cola", "CoLA", ["sentence"], ["unacceptable", "acceptable"], "matthews",
                  headerless_columns=("source", "label", "original_label", "sentence"),
                  headerless_splits=frozenset({"train", "validation"})),
    "sst2": _task("sst2", "SST-2", ["sentence"], ["negative", "positive"], "accuracy"),
    "mrpc": _task("mrpc", "MRPC", ["sentence1", "sentence2"], ["not_equivalent", "equivalent"], "f1",
                  text_columns=["#1 String", "#2 String"], label_column="Quality"),
    "stsb": _task("stsb", "STS-B", ["sentence1", "sentence2"], [], "pearson", label_column="score"),
    "qqp": _task("qqp", "QQP", ["question1", "question2"], ["not_duplicate", "duplicate"], "f1",
                 label_column="is_duplicate"),
    "mnli": _task("mnli", "MNLI", ["premise", "hypothesis"], ["entailment", "neutral", "contradiction"],
                  "accuracy_m", text_columns=["sentence1", "sentence2"], label_column="gold_label",
                  splits={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                          "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                          "test_mismatched": "test_mismatched.tsv"},
                  submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}),
    "qnli": _task("qnli", "QNLI", ["question", "sentence"], ["entailment", "not_entailment"], "accuracy"),
    "rte": _task("rte", "RTE", ["sentence1", "sentence2"], ["entailment", "not_entailment"], "accuracy"),
    "wnli": _task("wnli", "WNLI", ["sentence1", "sentence2"], ["not_entailment", "entailment"], "accuracy"),
})


def get_task(task: str | GlueTask) -> GlueTask:
    """Look a task up by name (``"mrpc"``), folder name (``"MRPC"``, ``"SST-2"``) or pass a GlueTask through.

    Raises
    ------
    ConfigError
        For an unknown name.
    """
    if isinstance(task, GlueTask):
        return task
    key = str(task).strip().lower()
    for spec in TASKS.values():
        if key in (spec.name, spec.dir.lower(), spec.dir.lower().replace("-", "")):
            return spec
    raise ConfigError(f"task.name={task}: unknown GLUE task; choose one of {', '.join(TASKS)}")


def get_split_file(task: GlueTask, split: str) -> str:
    """File name of ``split``; raises ConfigError listing the task's splits for an unknown one."""
    if split not in task.splits:
        raise ConfigError(f"split={split}: {task.name} has no such split; "
                          f"choose one of {', '.join(task.splits)}")
    return task.splits[split]


def resolve_glue_dir(glue_dir: str | os.PathLike | None = None) -> Path | None:
    """Find the folder with the GLUE TSVs; ``None`` means "use the hub dataset ``nyu-mll/glue``".

    Order: an explicit ``glue_dir`` (the string ``"hub"`` forces the hub), then the ``GLUE_DIR`` environment
    variable, then ``$SATEN_DATA_DIR/glue``, else the hub.

    Raises
    ------
    ConfigError
        When the chosen folder does not exist.
    """
    if glue_dir is not None and str(glue_dir) == HUB_SENTINEL:
        return None
    if glue_dir is not None and str(glue_dir) != "":
        origin, path = "data.glue_dir", Path(glue_dir).expanduser()
    elif os.environ.get("GLUE_DIR"):
        origin, path = "GLUE_DIR", Path(os.environ["GLUE_DIR"]).expanduser()
    elif os.environ.get("SATEN_DATA_DIR"):
        origin, path = "SATEN_DATA_DIR", Path(os.environ["SATEN_DATA_DIR"]).expanduser() / "glue"
    else:
        return None
    if not path.is_dir():
        raise ConfigError(
            f"{origin}={path}: GLUE data folder not found; set GLUE_DIR to the folder holding CoLA/, MRPC/, "
            f"... or SATEN_DATA_DIR to the folder holding glue/ (or data.glue_dir=hub to load {HUB_DATASET})"
        )
    return path


def glue_dir_resolver(data_dir: str | None = None) -> str | None:
    """OmegaConf resolver ``saten.glue_dir``: ``$GLUE_DIR``, else ``<data_dir>/glue``, else None (hub)."""
    if os.environ.get("GLUE_DIR"):
        return os.environ["GLUE_DIR"]
    if data_dir not in (None, "", "None", "null"):
        return str(Path(str(data_dir)) / "glue")
    return None
