"""Read one GLUE split, from the original TSV files or from the hub dataset, into the hub's schema.

Every example is a dict with the task's text keys (hub names), ``"label"`` (int; float for STS-B; -1 in test
splits) and ``"idx"`` (the row's position in its file, as in the hub dataset).
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from saten.data.glue_tasks import HUB_DATASET, GlueTask, get_split_file, get_task, resolve_glue_dir
from saten.errors import ConfigError

_OFFLINE_VALUES = {"1", "true", "yes", "on"}

# a few GLUE rows are long (QNLI, MNLI parses); the csv default of 128 KiB per field is not enough everywhere
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_split(task: str | GlueTask, split: str, glue_dir: str | os.PathLike | None = None) -> list[dict]:
    """Read one split of a GLUE task.

    Parameters
    ----------
    task : str or GlueTask
        Task name (``"mrpc"``) or spec from :data:`saten.data.glue.TASKS`.
    split : str
        ``"train"``, ``"validation"``, ``"test"`` (MNLI: ``validation_matched``/``validation_mismatched``,
        ``test_matched``/``test_mismatched``).
    glue_dir : path, ``"hub"`` or None
        Folder with the GLUE TSVs (``<glue_dir>/MRPC/train.tsv``). None: ``GLUE_DIR`` env, then
        ``$SATEN_DATA_DIR/glue``, then the hub dataset ``nyu-mll/glue``; ``"hub"`` forces the hub.

    Returns
    -------
    list of dict
        Examples in file order with the hub schema (text keys, ``label``, ``idx``).

    Raises
    ------
    ConfigError
        Missing folder or file, malformed row (names ``file:line``), unknown label, or the hub needed while
        ``HF_HUB_OFFLINE=1``.
    """
    spec = get_task(task)
    get_split_file(spec, split)
    root = resolve_glue_dir(glue_dir)
    if root is None:
        return read_hub_split(spec, split)
    return read_tsv_split(spec, split, split_path(spec, split, root))


def split_path(task: GlueTask, split: str, glue_dir: Path) -> Path:
    """Path of a split's TSV file; raises ConfigError naming the path and the fix when it is missing."""
    path = Path(glue_dir) / task.dir / get_split_file(task, split)
    if not path.is_file():
        raise ConfigError(
            f"glue_dir={glue_dir}: {task.name} {split} file {path} not found; set GLUE_DIR (or "
            f"SATEN_DATA_DIR) to a GLUE copy that has it, or data.glue_dir=hub to load {HUB_DATASET} "
            f"({task.hub_config})"
        )
    return path


def source_signature(task: GlueTask, split: str, glue_dir: str | os.PathLike | None = None) -> str:
    """A string that changes when the data behind a split changes (file path, size and mtime; or hub id)."""
    root = resolve_glue_dir(glue_dir)
    if root is None:
        import datasets

        return f"hub:{HUB_DATASET}:{task.hub_config}:{split}:datasets-{datasets.__version__}"
    path = split_path(task, split, root)
    stat = path.stat()
    return f"tsv:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def hub_is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) asks for no network access."""
    return any(os.environ.get(v, "").strip().lower() in _OFFLINE_VALUES
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_hub_split(task: GlueTask, split: str) -> list[dict]:
    """Load a split from the hub dataset ``nyu-mll/glue`` (fails fast when offline)."""
    if hub_is_offline():
        raise ConfigError(
            f"data.glue_dir=null: {task.name} needs the hub dataset {HUB_DATASET} ({task.hub_config}) but "
            "HF_HUB_OFFLINE=1; set GLUE_DIR to a folder with the GLUE TSVs or SATEN_DATA_DIR to one holding "
            "glue/"
        )
    import datasets

    dataset = datasets.load_dataset(HUB_DATASET, task.hub_config, split=split)
    cast = float if task.is_regression else int
    columns = [*task.text_keys, "label", "idx"]
    return [{k: row[k] for k in task.text_keys} | {"label": cast(row["label"]), "idx": int(row["idx"])}
            for row in dataset.select_columns(columns)]


def read_tsv_split(task: GlueTask, split: str, path: str | os.PathLike) -> list[dict]:
    """Parse one original GLUE TSV file (tab separated, no quoting; MRPC's BOM is stripped)."""
    path = Path(path)
    labelled = split not in task.test_splits
    examples = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if split in task.headerless_splits:
            header = list(task.headerless_columns)
        else:
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}: empty file; expected a header line; re-download the GLUE data")
        wanted = [*task.text_columns, *([task.label_column] if labelled else [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ConfigError(f"{path}:1: header {header} lacks columns {missing}; is this the GLUE "
                              f"{task.dir} {split} file?")
        positions = [header.index(c) for c in wanted]
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ConfigError(f"{path}:{reader.line_num}: malformed row with {len(row)} tab-separated "
                                  f"fields, expected {len(header)}; fix or re-download the file")
            values = [row[p] for p in positions]
            example = dict(zip(task.text_keys, values))
            example["label"] = _parse_label(task, values[-1], path, reader.line_num) if labelled else -1
            example["idx"] = len(examples)
            examples.append(example)
    return examples


def _parse_label(task: GlueTask, value: str, path: Path, line: int) -> int | float:
    """Turn a TSV label cell into the hub's label id (float score for STS-B)."""
    try:
        if task.is_regression:
            return float(value)
        if value in task.label_names:
            return task.label_names.index(value)
        label = int(value)
        if 0 <= label < task.num_labels:
            return label
    except ValueError:
        pass
    raise ConfigError(f"{path}:{line}: label {value!r} is not one of {list(task.label_names)} or 0.."
                      f"{task.num_labels - 1}; fix or re-download the file")
