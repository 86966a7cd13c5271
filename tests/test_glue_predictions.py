"""GLUE leaderboard submission files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saten.data.glue import write_glue_predictions
from saten.errors import ConfigError


def read(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    return [line.split("\t") for line in lines[1:]]


def test_file_names_and_label_formats(tmp_path):
    assert write_glue_predictions("cola", [1, 0, 1], tmp_path).name == "CoLA.tsv"
    assert read(tmp_path / "CoLA.tsv") == [["0", "1"], ["1", "0"], ["2", "1"]]
    rte = write_glue_predictions("rte", torch.tensor([[0.1, 0.9], [2.0, -1.0]]), tmp_path)  # logits
    assert rte.name == "RTE.tsv" and read(rte) == [["0", "not_entailment"], ["1", "entailment"]]
    assert read(write_glue_predictions("qnli", np.array([1]), tmp_path))[0] == ["0", "not_entailment"]
    assert read(write_glue_predictions("wnli", [1], tmp_path)) == [["0", "1"]]
    stsb = write_glue_predictions("stsb", torch.tensor([[5.7], [2.34567], [-0.2]]), tmp_path)
    assert stsb.name == "STS-B.tsv" and read(stsb) == [["0", "5.000"], ["1", "2.346"], ["2", "0.000"]]
    names = {task: write_glue_predictions(task, [0], tmp_path).name for task in ("sst2", "mrpc", "qqp")}
    assert names == {"sst2": "SST-2.tsv", "mrpc": "MRPC.tsv", "qqp": "QQP.tsv"}


def test_mnli_needs_a_split(tmp_path):
    matched = write_glue_predictions("mnli", [0, 1, 2], tmp_path, split="test_matched", indices=[5, 6, 7])
    assert matched.name == "MNLI-m.tsv"
    assert read(matched) == [["5", "entailment"], ["6", "neutral"], ["7", "contradiction"]]
    assert write_glue_predictions("mnli", [1], tmp_path, split="test_mismatched").name == "MNLI-mm.tsv"
    with pytest.raises(ConfigError, match="split=None"):
        write_glue_predictions("mnli", [1], tmp_path)
    with pytest.raises(ConfigError, match="split=validation"):
        write_glue_predictions("rte", [1], tmp_path, split="validation")
    with pytest.raises(ValueError, match="0..1"):
        write_glue_predictions("rte", [2], tmp_path)
