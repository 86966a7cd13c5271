"""Causal language-modelling data: WikiText-2 perplexity chunks and a fine-tuning text corpus.

Perplexity protocol (stated in the log of every run): the split's text is tokenized as one stream with
**no BOS** (``add_special_tokens=False``), cut into **non-overlapping** chunks of ``context`` tokens (the
last chunk may be shorter), and perplexity = exp(mean NLL over every predicted token), i.e. the summed
NLL of all chunks divided by the number of predicted tokens (each chunk's first token is context only).

Text sources for ``wikitext2``: the hub dataset ``wikitext`` / ``wikitext-2-raw-v1`` when the hub is
reachable (``HF_HUB_OFFLINE`` unset), else ``<data_dir>/wikitext-2/{valid,test}.txt`` (the *tokenized*
variant, with ``<unk>``; its perplexities are not comparable to raw-text figures). The training corpus is
a separate text (default ``<data_dir>/tinyshakespeare/input.txt``), never an evaluated split.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from saten.data.base import FromDataConfig
from saten.data.glue_reader import hub_is_offline
from saten.errors import ConfigError

log = logging.getLogger(__name__)

CORPORA = {"wikitext2": {"hub": ("wikitext", "wikitext-2-raw-v1"), "dir": "wikitext-2",
                         "files": {"validation": "valid.txt", "test": "test.txt"}}}
SOURCES = ("auto", "hub", "local")
PROTOCOL = ("non-overlapping chunks of {context} tokens, no BOS added; perplexity = exp(mean NLL over "
            "every predicted token of the split)")


def resolve_source(corpus: str, source: str, data_dir: str | os.PathLike | None) -> str:
    """``hub`` or ``local``: where the evaluation text of ``corpus`` comes from (``auto``: hub if online)."""
    if corpus not in CORPORA:
        raise ConfigError(f"data.corpus={corpus}: unknown evaluation corpus; use one of {', '.join(CORPORA)}")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source}: unknown; use one of {', '.join(SOURCES)}")
    if source == "auto":
        source = "local" if hub_is_offline() else "hub"
    if source == "hub" and hub_is_offline():
        raise ConfigError(f"data.source=hub: {corpus} needs the hub but HF_HUB_OFFLINE=1; use "
                          f"data.source=local")
    if source == "local":
        folder = Path(str(data_dir or "")) / CORPORA[corpus]["dir"]
        if data_dir is None or not folder.is_dir():
            raise ConfigError(f"paths.data_dir={data_dir}: no {CORPORA[corpus]['dir']}/ folder there; set "
                              f"SATEN_DATA_DIR to the shared data folder or use data.source=hub")
    return source


def read_eval_text(corpus: str, split: str, source: str, data_dir: str | os.PathLike | None = None) -> str:
    """The text of split ``validation`` or ``test`` of ``corpus`` from ``source`` (``hub`` | ``local``)."""
    spec = CORPORA[corpus]
    if split not in spec["files"]:
        raise ConfigError(f"split={split}: {corpus} is evaluated on {', '.join(spec['files'])}")
    if source == "hub":
        import datasets

        rows = datasets.load_dataset(*spec["hub"], split=split)["text"]
        return "".join(rows)  # every row keeps its trailing newline: this is the original file
    path = Path(str(data_dir)) / spec["dir"] / spec["files"][split]
    if not path.is_file():
        raise ConfigError(f"paths.data_dir={data_dir}: {path} is missing; use data.source=hub")
    return path.read_text(encoding="utf-8")


def resolve_train_file(train_corpus: str | None, data_dir: str | os.PathLike | None,
                       key: str = "data.train_corpus") -> Path | None:
    """Path of the fine-tuning text: a ``.txt`` path or a folder (under ``data_dir``) with ``input.txt``
    (``key``: the config key errors name)."""
    if train_corpus in (None, ""):
        return None
    path = Path(str(train_corpus))
    if not path.is_absolute() and not path.exists() and data_dir is not None:
        path = Path(str(data_dir)) / path
    if path.is_dir():
        path = path / "input.txt"
    if not path.is_file():
        raise ConfigError(f"{key}={train_corpus}: {path} is not a text file; pass a .txt path or "
                          f"a folder under paths.data_dir holding input.txt (e.g. tinyshakespeare)")
    for spec in CORPORA.values():  # never train on a split that is evaluated
        if path.parent.name == spec["dir"] and path.name in spec["files"].values():
            raise ConfigError(f"{key}={train_corpus}: {path.name} is an evaluated split; train "
                              f"on another corpus (e.g. {key}=tinyshakespeare)")
    return path


def tokenize_stream(text: str, tokenizer, cache_dir: str | os.PathLike | None = None,
                    name: str = "text") -> torch.Tensor:
    """Token ids (int64, shape ``(n,)``) of ``text`` as one stream, no special tokens; cached on disk."""
    from saten.data.glue_tokenized import tokenizer_fingerprint

    path = None
    if cache_dir is not None:
        key = hashlib.sha256(text.encode()).hexdigest()[:16] + "-" + tokenizer_fingerprint(tokenizer)
        path = Path(cache_dir) / "lm" / f"{name}-{key}.pt"
        if path.is_file():
            return torch.load(path)
    from saten.packaged import _quiet_transformers

    with _quiet_transformers():  # one stream, longer than model_max_length on purpose
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tensor = torch.tensor(ids, dtype=torch.int64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(tensor, tmp)
        os.replace(tmp, path)
    return tensor


class ChunkDataset(Dataset):
    """Non-overlapping chunks of ``context`` tokens of one token stream (the last may be shorter).

    Parameters
    ----------
    ids : torch.Tensor
        Shape ``(n,)``, int64.
    context : int
        Chunk length in tokens.
    drop_last : bool
        Drop a final chunk shorter than ``context`` (training); kept for evaluation so every token counts.
    min_length : int
        Chunks shorter than this are dropped (a 1-token chunk predicts nothing).
    """

    def __init__(self, ids: torch.Tensor, context: int, drop_last: bool = False, min_length: int = 2):
        self.ids, self.context = ids, int(context)
        starts = list(range(0, len(ids), self.context))
        self.starts = [s for s in starts if min(self.context, len(ids) - s) >= max(min_length, 1)
                       and not (drop_last and len(ids) - s < self.context)]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = self.starts[i]
        return self.ids[start:start + self.context]

    @property
    def predicted_tokens(self) -> int:
        """Number of tokens whose NLL enters the perplexity (chunk length minus one, summed)."""
        return sum(len(self[i]) - 1 for i in range(len(self)))


def collate_chunks(chunks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-pad chunks into a batch: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    length = max(len(c) for c in chunks)
    input_ids = torch.zeros(len(chunks), length, dtype=torch.int64)
    mask = torch.zeros(len(chunks), length, dtype=torch.int64)
    for row, chunk in enumerate(chunks):
        input_ids[row, : len(chunk)] = chunk
        mask[row, : len(chunk)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and the number of predicted tokens.

    Parameters
    ----------
    logits : torch.Tensor
        Shape ``(batch, length, vocab)``; position ``t`` predicts token ``t + 1``.
    labels : torch.Tensor
        Shape ``(batch, length)``; -100 marks tokens that are not predicted (padding).

    Returns
    -------
    tuple of torch.Tensor
        ``(sum of -log p, count)`` as float64 scalars; perplexity = exp(sum / count).
    """
    target = labels[:, 1:]
    keep = target != -100
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                                            ignore_index=-100, reduction="sum")
    return nll.double(), keep.sum().double()


class LMDataModule(FromDataConfig, LightningDataModule):
    """Perplexity evaluation chunks (validation, test) and an optional fine-tuning corpus.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        The model's tokenizer.
    corpus : str
        Evaluation corpus (``wikitext2``).
    source : {"auto", "hub", "local"}
        Where the evaluation text comes from (``auto``: hub when online, else ``<data_dir>``).
    data_dir : path, optional
        The shared data folder (``paths.data_dir``).
    context : int
        Evaluation chunk length (the paper: 4096; 1024 is a CPU-friendly default).
    train_corpus : str, optional
        Fine-tuning text: a folder under ``data_dir`` with ``input.txt`` or a ``.txt`` path.
    train_context : int
        Training chunk length.
    batch_size, eval_batch_size : int
        Chunks per training / evaluation batch.
    train_limit : int, optional
        Train on a seeded random subset of this many chunks.
    num_workers : int
        DataLoader worker processes.
    cache_dir : path, optional
        Token ids are cached under ``<cache_dir>/lm/``.
    seed : int
        Seed of the ``train_limit`` subset and the shuffling.
    """

    def __init__(self, tokenizer, corpus: str = "wikitext2", source: str = "auto", data_dir=None,
                 context: int = 1024, train_corpus: str | None = "tinyshakespeare", train_context: int = 256,
                 batch_size: int = 4, eval_batch_size: int = 1, train_limit: int | None = None,
                 num_workers: int = 0, cache_dir=None, seed: int = 0):
        super().__init__()
        for key, value, low in (("context", context, 2), ("train_context", train_context, 2),
                                ("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("train_limit", train_limit, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"data.{key}={value}: must be an integer >= {low}")
        self.tokenizer, self.corpus, self.data_dir = tokenizer, corpus, data_dir
        self.source = resolve_source(corpus, source, data_dir)
        self.context, self.train_context = context, train_context
        self.train_corpus = train_corpus
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_limit, self.num_workers, self.seed = train_limit, num_workers, seed
        self.cache_dir = None if cache_dir in (None, "") else os.fspath(cache_dir)
        self.datasets: dict[str, ChunkDataset] = {}

    @property
    def protocol(self) -> str:
        """One line describing the perplexity protocol and the text source."""
        where = ("hub wikitext-2-raw-v1 (raw text)" if self.source == "hub" else
                 f"local {Path(str(self.data_dir)) / CORPORA[self.corpus]['dir']} (the TOKENIZED variant, "
                 f"with <unk>; not comparable to raw-text perplexities)")
        return f"{self.corpus} from {where}: " + PROTOCOL.format(context=self.context)

    def dataset(self, split: str) -> ChunkDataset:
        """Chunks of ``train`` (the fine-tuning corpus), ``validation`` or ``test``."""
        if split not in self.datasets:
            if split == "train":
                path = resolve_train_file(self.train_corpus, self.data_dir)
                if path is None:
                    raise ConfigError("data.train_corpus=null: training needs a text corpus; set "
                                      "data.train_corpus=tinyshakespeare or trainer.max_epochs=0")
                ids = tokenize_stream(path.read_text(encoding="utf-8"), self.tokenizer, self.cache_dir,
                                      path.stem)
                self.datasets[split] = ChunkDataset(ids, self.train_context, drop_last=True)
            else:
                text = read_eval_text(self.corpus, split, self.source, self.data_dir)
                ids = tokenize_stream(text, self.tokenizer, self.cache_dir, f"{self.corpus}-{split}")
                self.datasets[split] = ChunkDataset(ids, self.context)
                log.info("%s %s: %d tokens, %d chunks; %s", self.corpus, split, len(ids),
                         len(self.datasets[split]), self.protocol)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        """Tokenize what a stage needs: fit -> train + validation, validate -> validation, test -> test."""
        names = {"fit": ["train", "validation"], "validate": ["validation"], "test": ["test"]}
        for name in names.get(stage, ["validation", "test"]):
            self.dataset(name)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=collate_chunks, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training chunks (``train_limit``: a seeded random subset)."""
        dataset = self.dataset("train")
        if self.train_limit is not None and self.train_limit < len(dataset):
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))
            dataset = torch.utils.data.Subset(dataset, order[: self.train_limit].tolist())
        return self._loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation chunks in text order."""
        return self._loader(self.dataset("validation"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test chunks in text order."""
        return self._loader(self.dataset("test"), self.eval_batch_size, shuffle=False)
