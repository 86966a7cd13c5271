"""LightningDataModule for the GLUE tasks."""

from __future__ import annotations

import os

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import DataCollatorWithPadding

from saten.data.base import FromDataConfig
from saten.data.glue_tasks import GlueTask, get_task, resolve_glue_dir
from saten.data.glue_tokenized import TokenizedSplit, load_or_build_split
from saten.errors import ConfigError


class GlueDataModule(FromDataConfig, LightningDataModule):
    """Tokenized GLUE train / validation / test loaders for one task.

    Parameters
    ----------
    task : str or GlueTask
        Task name (``"mrpc"``).
    tokenizer : PreTrainedTokenizerBase
        Tokenizer of the model; must have a pad token (set ``pad = eos`` for LLaMA before passing it).
    glue_dir : path, ``"hub"`` or None
        Folder with the GLUE TSVs. None: ``GLUE_DIR`` env, then ``$SATEN_DATA_DIR/glue``, then the hub dataset
        ``nyu-mll/glue``; ``"hub"`` forces the hub.
    max_seq_length : int
        Sequences (pairs: both segments together) are truncated to this many tokens, longest segment first.
    batch_size, eval_batch_size : int
        Batch sizes of the train loader and of the validation / test loaders.
    dynamic_padding : bool
        Pad each batch to its longest sequence (True) or always to ``max_seq_length`` (False).
    train_limit : int or None
        Keep only the first ``train_limit`` training examples *after* a shuffle seeded with ``seed`` (a random
        subset, the same for the same seed); None keeps all.
    eval_limit : int or None
        Keep only the first ``eval_limit`` examples of every validation and test split (file order); for quick
        runs and tests. None keeps all.
    num_workers : int
        DataLoader worker processes.
    cache_dir : path or None
        Tokenized splits are cached under ``<cache_dir>/glue/``; None disables the cache.
    seed : int
        Seed of the ``train_limit`` subset and of the train loader's shuffling generator.

    Notes
    -----
    Batches are dicts of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
    makes them) and ``labels`` (int64; float32 for STS-B). Test batches carry no ``labels``; their order is
    the file order (``idx`` 0, 1, ...), which :func:`saten.data.glue.write_glue_predictions` relies on.
    """

    def __init__(self, task: str | GlueTask, tokenizer, glue_dir: str | os.PathLike | None = None,
                 max_seq_length: int = 128, batch_size: int = 32, eval_batch_size: int = 64,
                 dynamic_padding: bool = True, train_limit: int | None = None, eval_limit: int | None = None,
                 num_workers: int = 0, cache_dir: str | os.PathLike | None = None, seed: int = 0):
        super().__init__()
        for key, value, minimum in (("max_seq_length", max_seq_length, 1), ("batch_size", batch_size, 1),
                                    ("eval_batch_size", eval_batch_size, 1), ("num_workers", num_workers, 0),
                                    ("train_limit", train_limit, 1), ("eval_limit", eval_limit, 1)):
            bad_type = not isinstance(value, int) or isinstance(value, bool)
            if value is not None and (bad_type or value < minimum):
                raise ConfigError(f"data.{key}={value}: must be an integer >= {minimum}"
                                  + ("" if key not in ("train_limit", "eval_limit") else " or null"))
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ConfigError("tokenizer.pad_token=None: GLUE batches need padding; set tokenizer.pad_token "
                              "(LLaMA: tokenizer.pad_token = tokenizer.eos_token)")
        self.task = get_task(task)
        self.tokenizer = tokenizer
        self.glue_dir = resolve_glue_dir(glue_dir)
        self.max_seq_length, self.dynamic_padding = max_seq_length, bool(dynamic_padding)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_limit, self.eval_limit = train_limit, eval_limit
        self.num_workers, self.seed = num_workers, seed
        self.cache_dir = None if cache_dir in (None, "") else os.fspath(cache_dir)
        self.splits: dict[str, TokenizedSplit] = {}
        self.collator = DataCollatorWithPadding(
            tokenizer, padding="longest" if self.dynamic_padding else "max_length",
            max_length=None if self.dynamic_padding else max_seq_length, return_tensors="pt")

    @property
    def source(self) -> str:
        """``"tsv:<glue_dir>"`` or ``"hub:nyu-mll/glue"``: where the examples come from."""
        return "hub:nyu-mll/glue" if self.glue_dir is None else f"tsv:{self.glue_dir}"

    @property
    def num_labels(self) -> int:
        """Number of model outputs (1 for STS-B)."""
        return self.task.num_labels

    @property
    def eval_split_names(self) -> list[str]:
        """Names of the validation splits, in ``val_dataloader()`` order (MNLI: matched, mismatched)."""
        return list(self.task.eval_splits)

    @property
    def test_split_names(self) -> list[str]:
        """Names of the test splits, in ``test_dataloader()`` order."""
        return list(self.task.test_splits)

    def split(self, name: str) -> TokenizedSplit:
        """Tokenized split ``name`` (read from the on-disk cache, or read and tokenized once)."""
        if name not in self.splits:
            self.splits[name] = load_or_build_split(self.task, name, self.tokenizer, self.max_seq_length,
                                                    self._glue_dir_arg, self.cache_dir)
        return self.splits[name]

    @property
    def _glue_dir_arg(self) -> str | os.PathLike:
        return "hub" if self.glue_dir is None else self.glue_dir

    def setup(self, stage: str | None = None) -> None:
        """Load the splits a stage needs: fit -> train + validation, validate -> validation, test/predict."""
        names = {"fit": [self.task.train_split, *self.eval_split_names], "validate": self.eval_split_names,
                 "test": self.test_split_names, "predict": self.test_split_names}
        for name in names.get(stage, [*names["fit"], *names["test"]]):
            self.split(name)

    def train_dataset(self) -> Dataset:
        """Training examples after ``train_limit`` (a seeded random subset when set)."""
        dataset = self.split(self.task.train_split)
        if self.train_limit is None or self.train_limit >= len(dataset):
            return dataset
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))
        return Subset(dataset, order[: self.train_limit].tolist())

    def eval_dataset(self, name: str) -> Dataset:
        """Validation or test split ``name`` after ``eval_limit`` (first rows in file order)."""
        dataset = self.split(name)
        if self.eval_limit is None or self.eval_limit >= len(dataset):
            return dataset
        return Subset(dataset, list(range(self.eval_limit)))

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=self.collator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (generator seeded with ``seed``)."""
        return self._loader(self.train_dataset(), self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per validation split (``eval_split_names`` order)."""
        return [self._loader(self.eval_dataset(n), self.eval_batch_size, shuffle=False)
                for n in self.eval_split_names]

    def test_dataloader(self) -> list[DataLoader]:
        """One unlabelled loader per test split (``test_split_names`` order)."""
        return [self._loader(self.eval_dataset(n), self.eval_batch_size, shuffle=False)
                for n in self.test_split_names]

    def predict_dataloader(self) -> list[DataLoader]:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()
