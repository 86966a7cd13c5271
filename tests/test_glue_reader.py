"""GLUE task registry and split reader: real TSVs, fixtures in both layouts, and the error messages."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import FIXTURE_GLUE  # noqa: E402

from saten.data.glue import TASKS, get_task, read_split, resolve_glue_dir
from saten.data.glue_tasks import glue_dir_resolver
from saten.errors import ConfigError

DATA_DIR = Path(os.environ.get("SATEN_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
GLUE_DIR = DATA_DIR / "glue"
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "MRPC").is_dir(), reason=f"GLUE data not found at {GLUE_DIR}")

# rows and label counts as listed in shared/data/glue/SOURCES.md
REAL_SPLITS = {
    ("cola", "train"): (8551, {1: 6023, 0: 2528}), ("cola", "validation"): (1043, {1: 721, 0: 322}),
    ("cola", "test"): (1063, None),
    ("sst2", "train"): (67349, {1: 37569, 0: 29780}), ("sst2", "validation"): (872, {1: 444, 0: 428}),
    ("sst2", "test"): (1821, None),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194}), ("mrpc", "validation"): (408, {1: 279, 0: 129}),
    ("mrpc", "test"): (1725, None),
    ("stsb", "train"): (5749, None), ("stsb", "validation"): (1500, None), ("stsb", "test"): (1379, None),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}), ("rte", "validation"): (277, {0: 146, 1: 131}),
    ("rte", "test"): (3000, None),
    ("wnli", "train"): (635, {0: 323, 1: 312}), ("wnli", "validation"): (71, {0: 40, 1: 31}),
    ("wnli", "test"): (146, None),
    ("qnli", "validation"): (5463, {0: 2702, 1: 2761}), ("qnli", "test"): (5463, None),
}


@pytest.fixture
def no_glue_env(monkeypatch):
    """No GLUE_DIR / SATEN_DATA_DIR, so that only explicit arguments count."""
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.delenv("SATEN_DATA_DIR", raising=False)


def test_registry_matches_hub_conventions():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert TASKS["mnli"].test_splits == ("test_matched", "test_mismatched")
    assert TASKS["stsb"].num_labels == 1 and TASKS["stsb"].is_regression
    assert TASKS["mrpc"].text_keys == ("sentence1", "sentence2") and TASKS["mrpc"].dir == "MRPC"
    assert get_task("SST-2") is TASKS["sst2"] and get_task("STS-B") is TASKS["stsb"]
    with pytest.raises(ConfigError, match="task.name=squad"):
        get_task("squad")


@needs_glue
@pytest.mark.integration
@pytest.mark.parametrize(("task", "split"), list(REAL_SPLITS))
def test_real_tsv_rows_and_labels(task, split):
    rows, label_counts = REAL_SPLITS[(task, split)]
    examples = read_split(task, split, GLUE_DIR)
    spec = TASKS[task]
    assert len(examples) == rows
    assert [ex["idx"] for ex in examples] == list(range(rows))
    assert all(set(ex) == {*spec.text_keys, "label", "idx"} for ex in examples)
    assert all(isinstance(ex[k], str) and ex[k].strip() for ex in examples for k in spec.text_keys)
    labels = [ex["label"] for ex in examples]
    if split == "test":
        assert set(labels) == {-1}
    elif spec.is_regression:
        assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
    else:
        assert dict(Counter(labels)) == label_counts


@needs_glue
@pytest.mark.integration
def test_real_tsv_quirks():
    mrpc = read_split("mrpc", "train", GLUE_DIR)[0]  # BOM header, quotes kept verbatim
    assert mrpc["sentence1"].startswith('Amrozi accused his brother, whom he called "the witness"')
    cola = read_split("cola", "validation", GLUE_DIR)  # headerless, no newline at the end of the file
    assert cola[-1]["sentence"] == "John talked to Bill about himself."
    assert read_split("rte", "train", GLUE_DIR)[0]["label"] == 1  # not_entailment
    assert read_split("stsb", "train", GLUE_DIR)[1]["label"] == pytest.approx(3.8)


def test_env_selects_glue_dir(monkeypatch, no_glue_env, tmp_path):
    assert resolve_glue_dir() is None
    (tmp_path / "glue").mkdir()
    monkeypatch.setenv("SATEN_DATA_DIR", str(tmp_path))
    assert resolve_glue_dir() == tmp_path / "glue"
    monkeypatch.setenv("GLUE_DIR", str(FIXTURE_GLUE))
    assert resolve_glue_dir() == FIXTURE_GLUE
    assert resolve_glue_dir(tmp_path) == tmp_path and resolve_glue_dir("hub") is None
    assert read_split("qqp", "test")[1]["question2"] == "How do I bake bread?"


def test_resolver_order(monkeypatch, no_glue_env):
    assert glue_dir_resolver(None) is None
    assert glue_dir_resolver("/data") == str(Path("/data/glue"))
    monkeypatch.setenv("GLUE_DIR", "/elsewhere")
    assert glue_dir_resolver("/data") == "/elsewhere"


def test_missing_dir_and_file_name_path_and_fix(no_glue_env, tmp_path):
    with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path / 'nope'))}.*GLUE_DIR.*SATEN_DATA_DIR"):
        read_split("rte", "train", tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"QNLI/train\.tsv not found; set GLUE_DIR"):
        read_split("qnli", "train", tmp_path)
    with pytest.raises(ConfigError, match="split=dev"):
        read_split("rte", "dev", FIXTURE_GLUE)


def test_malformed_row_names_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    bad = tmp_path / "RTE" / "train.tsv"
    header = "index\tsentence1\tsentence2\tlabel\n"
    bad.write_text(header + "0\tA.\tB.\tentailment\n1\tA \"quoted\" one.\tnot_entailment\n")
    expected = rf"{re.escape(str(bad))}:3: malformed row with 3 tab-separated fields, expected 4"
    with pytest.raises(ConfigError, match=expected):
        read_split("rte", "train", tmp_path)
    bad.write_text(header + "0\tA.\tB.\tmaybe\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}:2: label 'maybe'"):
        read_split("rte", "train", tmp_path)


def test_offline_hub_fails_fast(monkeypatch, no_glue_env):
    import datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("load_dataset must not be called offline")

    monkeypatch.setattr(datasets, "load_dataset", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"nyu-mll/glue.*HF_HUB_OFFLINE=1.*GLUE_DIR.*SATEN_DATA_DIR"):
        read_split("mrpc", "validation")


# ---------------------------------------------------------------- hub layout vs original TSV layout
def hub_dataset(config: str, split: str):
    """A tiny ``datasets.Dataset`` shaped like ``nyu-mll/glue`` (ClassLabel labels, ``idx``), built from the
    fixture TSVs with pandas -- independently of saten's reader, the way the hub's loading script does it."""
    import datasets
    import pandas as pd

    spec = TASKS[config]
    frame = pd.read_csv(FIXTURE_GLUE / spec.dir / spec.splits[split], sep="\t", quoting=csv.QUOTE_NONE,
                        dtype=str, keep_default_na=False)
    class_label = datasets.ClassLabel(names=list(spec.label_names))
    columns = {key: frame[col].tolist() for key, col in zip(spec.text_keys, spec.text_columns)}
    if split.startswith("test"):
        columns["label"] = [-1] * len(frame)
    else:
        cells = frame[spec.label_column]
        columns["label"] = [int(v) if v.isdigit() else class_label.str2int(v) for v in cells]
    columns["idx"] = list(range(len(frame)))
    text = {k: datasets.Value("string") for k in spec.text_keys}
    features = datasets.Features({**text, "label": class_label, "idx": datasets.Value("int32")})
    return datasets.Dataset.from_dict(columns, features=features)


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset("nyu-mll/glue", config, split=...)`` served from the fixtures; network off."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        assert path == "nyu-mll/glue"
        calls.append((name, split))
        return hub_dataset(name, split)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return calls


@pytest.mark.parametrize("task", ["qqp", "mnli", "qnli"])
def test_fixture_tsv_and_hub_give_identical_examples(task, fake_hub, no_glue_env):
    for split in TASKS[task].splits:
        from_tsv = read_split(task, split, FIXTURE_GLUE)
        from_hub = read_split(task, split)  # no env, no glue_dir -> hub
        assert from_tsv == from_hub and len(from_tsv) >= 2
        assert [[type(v) for v in ex.values()] for ex in from_tsv] == [[type(v) for v in ex.values()]
                                                                        for ex in from_hub]
        assert all(list(ex) == [*TASKS[task].text_keys, "label", "idx"] for ex in from_tsv)
    assert (task, TASKS[task].test_splits[-1]) in fake_hub


def test_fixture_labels_follow_hub_ids(no_glue_env):
    mnli = read_split("mnli", "validation_matched", FIXTURE_GLUE)
    assert [ex["label"] for ex in mnli] == [2, 0, 1]  # contradiction, entailment, neutral
    assert mnli[0]["premise"] == "The report was finished on time."
    assert [ex["label"] for ex in read_split("qnli", "train", FIXTURE_GLUE)] == [0, 1, 0]
    qqp = read_split("qqp", "train", FIXTURE_GLUE)
    assert [ex["label"] for ex in qqp] == [1, 0, 1, 0] and qqp[2]["question1"] == 'What does "quantum" mean?'
    assert {ex["label"] for ex in read_split("mnli", "test_mismatched", FIXTURE_GLUE)} == {-1}
