"""SuperGLUE classification (CB, WSC, COPA, RTE, WiC, BoolQ) for a sequence-classification head.

Every task becomes a text pair + a class id, read from the official JSONL release
(``<data_dir>/super_glue/<TASK>/{train,val,test}.jsonl``) or from the hub dataset ``super_glue`` (same
fields, WSC's ``target`` flattened, integer labels). Label ids follow the hub: CB entailment=0,
contradiction=1, neutral=2; RTE entailment=0, not_entailment=1; WiC/WSC/BoolQ false=0, true=1; COPA the
index of the right choice. The pair templates (e.g. COPA ``"<premise> What was the cause?"`` +
``"1: <choice1> 2: <choice2>"``) are this repo's choice; the paper's are not published.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Subset
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from transformers import DataCollatorWithPadding

from saten.data.base import FromDataConfig
from saten.data.glue_reader import hub_is_offline
from saten.errors import ConfigError

HUB_DATASET = "super_glue"
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
SOURCES = ("auto", "hub", "local")


def _wsc(row: dict) -> tuple[str, str]:
    target = row.get("target", row)  # the release nests the spans in `target`; the hub flattens them
    return row["text"], f"Does \"{target['span2_text']}\" refer to \"{target['span1_text']}\"?"


PAIRS: dict[str, Callable[[dict], tuple[str, str]]] = {
    "cb": lambda r: (r["premise"], r["hypothesis"]),
    "superglue_rte": lambda r: (r["premise"], r["hypothesis"]),
    "boolq": lambda r: (r["passage"], r["question"].rstrip("?") + "?"),
    "wic": lambda r: (r["sentence1"], f"{r['sentence2']} Same meaning of \"{r['word']}\"?"),
    "wsc": _wsc,
    "copa": lambda r: (f"{r['premise']} What was the {r['question']}?",
                       f"1: {r['choice1']} 2: {r['choice2']}"),
}


@dataclass(frozen=True)
class SuperGlueTask:
    """One SuperGLUE task: folder, hub config, label names (id order) and main metric."""

    name: str
    dir: str
    hub_config: str
    label_names: tuple[str, ...]
    metric: str = "accuracy"
    is_regression: bool = False
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def metric_keys(self) -> list[str]:
        """Keys :class:`SuperGlueMetric` computes (CB adds macro F1 and the mean of the two)."""
        return ["accuracy", "f1_macro", "combined"] if self.name == "cb" else ["accuracy"]


BOOL = ("false", "true")
TASKS = {t.name: t for t in (
    SuperGlueTask("cb", "CB", "cb", ("entailment", "contradiction", "neutral")),
    SuperGlueTask("superglue_rte", "RTE", "rte", ("entailment", "not_entailment")),
    SuperGlueTask("boolq", "BoolQ", "boolq", BOOL),
    SuperGlueTask("wic", "WiC", "wic", BOOL),
    SuperGlueTask("wsc", "WSC", "wsc.fixed", BOOL),
    SuperGlueTask("copa", "COPA", "copa", ("choice1", "choice2")),
)}


def get_task(name: str | SuperGlueTask) -> SuperGlueTask:
    """The :class:`SuperGlueTask` called ``name``."""
    if isinstance(name, SuperGlueTask):
        return name
    if name not in TASKS:
        raise ConfigError(f"task.name={name}: not a SuperGLUE task; use one of {', '.join(TASKS)}")
    return TASKS[name]


def _label(task: SuperGlueTask, value, where: str) -> int:
    if value is None or value == -1:
        return -1
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and 0 <= value < task.num_labels:
        return value
    if isinstance(value, str) and value in task.label_names:
        return task.label_names.index(value)
    raise ConfigError(f"data.data_dir: {where}: label {value!r} is not one of {task.label_names}; use the "
                      f"official SuperGLUE files")


def read_jsonl_split(task: str | SuperGlueTask, split: str, super_glue_dir: str | os.PathLike) -> list[dict]:
    """Rows ``{"text_a", "text_b", "label", "idx"}`` of one split of the official JSONL files (test: -1)."""
    task = get_task(task)
    path = Path(super_glue_dir) / task.dir / SPLIT_FILES[split]
    if not path.is_file():
        raise ConfigError(f"data.data_dir={Path(super_glue_dir).parent}: {path} is missing; use "
                          f"data.source=hub, or evaluate only (the shared data has no BoolQ train split)")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                row = json.loads(line)
                a, b = PAIRS[task.name](row)
                rows.append({"text_a": a, "text_b": b, "idx": int(row.get("idx", number - 1)),
                             "label": _label(task, row.get("label"), f"{path}:{number}")})
    return rows


def read_hub_split(task: str | SuperGlueTask, split: str) -> list[dict]:
    """The same rows from the hub dataset ``super_glue`` (network)."""
    import datasets

    task = get_task(task)
    if hub_is_offline():
        raise ConfigError(f"data.source=hub: {task.name} needs the hub dataset {HUB_DATASET} but "
                          f"HF_HUB_OFFLINE=1; set SATEN_DATA_DIR to a folder holding super_glue/")
    rows = []
    for row in datasets.load_dataset(HUB_DATASET, task.hub_config, split=split):
        a, b = PAIRS[task.name](row)
        rows.append({"text_a": a, "text_b": b, "idx": int(row["idx"]),
                     "label": _label(task, row["label"], "hub")})
    return rows


def resolve_source(task: SuperGlueTask, source: str, data_dir) -> Path | None:
    """The ``super_glue`` folder to read (``auto``: local when the task's folder exists), None = the hub."""
    if source not in SOURCES:
        raise ConfigError(f"data.source={source}: unknown; use one of {', '.join(SOURCES)}")
    folder = Path(str(data_dir)) / "super_glue" if data_dir is not None else None
    present = folder is not None and (folder / task.dir).is_dir()
    if source == "local" and not present:
        raise ConfigError(f"paths.data_dir={data_dir}: no super_glue/{task.dir}/ there; set SATEN_DATA_DIR "
                          f"or use data.source=hub")
    return folder if source == "local" or (source == "auto" and present) else None


class SuperGlueDataModule(FromDataConfig, LightningDataModule):
    """Tokenized SuperGLUE train / validation / test loaders for one task (pairs, dynamic padding).

    Parameters
    ----------
    task : str
        ``cb``, ``wsc``, ``copa``, ``superglue_rte``, ``wic`` or ``boolq``.
    tokenizer : PreTrainedTokenizerBase
        With a pad token (LLaMA: pad = eos).
    source : {"auto", "hub", "local"}
        ``auto``: ``<data_dir>/super_glue/<TASK>/`` when present, else the hub.
    data_dir : path, optional
        The shared data folder (``paths.data_dir``).
    max_seq_length : int
        Pairs are truncated to this many tokens together, longest segment first.
    batch_size, eval_batch_size, train_limit, eval_limit, num_workers, seed
        As for :class:`saten.data.glue.GlueDataModule`.
    """

    def __init__(self, task: str, tokenizer, source: str = "auto", data_dir=None, max_seq_length: int = 256,
                 batch_size: int = 16, eval_batch_size: int = 32, train_limit: int | None = None,
                 eval_limit: int | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ConfigError("tokenizer.pad_token=None: set tokenizer.pad_token (LLaMA: the eos token)")
        self.task, self.tokenizer = get_task(task), tokenizer
        self.folder = resolve_source(self.task, source, data_dir)
        self.max_seq_length = max_seq_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_limit, self.eval_limit = train_limit, eval_limit
        self.num_workers, self.seed = num_workers, seed
        self.splits: dict[str, list[dict]] = {}
        self.collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @property
    def source(self) -> str:
        return f"jsonl:{self.folder}" if self.folder is not None else f"hub:{HUB_DATASET}"

    def rows(self, split: str) -> list[dict]:
        """Raw rows of ``split`` (``train``, ``validation``, ``test``)."""
        if self.folder is not None:
            return read_jsonl_split(self.task, split, self.folder)
        return read_hub_split(self.task, split)

    def split(self, name: str) -> list[dict]:
        """Tokenized examples of split ``name`` (dicts for :class:`DataCollatorWithPadding`)."""
        if name not in self.splits:
            rows = self.rows(name)
            enc = self.tokenizer([r["text_a"] for r in rows], [r["text_b"] for r in rows], truncation=True,
                                 max_length=self.max_seq_length)
            self.splits[name] = [{k: enc[k][i] for k in enc} | ({"labels": r["label"]} if r["label"] >= 0
                                                                else {}) for i, r in enumerate(rows)]
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        names = {"fit": ["train", "validation"], "validate": ["validation"], "test": ["test"]}
        for name in names.get(stage, ["validation"]):
            self.split(name)

    def _loader(self, data, batch_size: int, shuffle: bool, limit: int | None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        if limit is not None and limit < len(data):
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed)) if shuffle \
                else torch.arange(len(data))
            data = Subset(data, order[:limit].tolist())
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=self.collator, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split("train"), self.batch_size, True, self.train_limit)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.split("validation"), self.eval_batch_size, False, self.eval_limit)]


class SuperGlueMetric(Metric):
    """Accumulating SuperGLUE metric: ``accuracy`` (CB also ``f1_macro`` and their mean ``combined``)."""

    full_state_update = False

    def __init__(self, task: str | SuperGlueTask, **kwargs):
        super().__init__(**kwargs)
        self.task = get_task(task)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        self.preds.append(preds.detach().long().flatten())
        self.labels.append(labels.detach().long().flatten())

    def compute(self) -> dict[str, float]:
        from sklearn.metrics import f1_score

        preds, labels = dim_zero_cat(self.preds).cpu().numpy(), dim_zero_cat(self.labels).cpu().numpy()
        out = {"accuracy": float((preds == labels).mean())}
        if self.task.name == "cb":
            out["f1_macro"] = float(f1_score(labels, preds, average="macro",
                                             labels=list(range(self.task.num_labels)), zero_division=0))
            out["combined"] = (out["accuracy"] + out["f1_macro"]) / 2
        return out
