"""Round trips: a compressed, fine-tuned model reloads bit-exactly (weights, masks, ranks) and evaluates to
the same metric, from the run dir and from a Lightning checkpoint, even where a fresh compression gives other
ranks.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_pipeline import compose_config
from test_validate import tiny, write_mrpc

from saten import compress
from saten.embedding import SatenEmbedding
from saten.layers import SatenLinear
from saten.lowrank import SVDLinear
from saten.models import load_model
from saten.reload import load_state_exact, match_state

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec",
                                        "ignore:.*does not have many workers")


def structure(model: torch.nn.Module) -> dict:
    """Ranks / kept-value counts / SVD ranks of every compressed layer."""
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, (SatenLinear, SatenEmbedding)):
            out[name] = (tuple(layer.ranks), layer.nnz)
        elif isinstance(layer, SVDLinear):
            out[name] = layer.rank
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Saten(u) run with a kept full checkpoint: (run dir, summary, glue dir)."""
    from saten.train import run

    root = tmp_path_factory.mktemp("roundtrip")
    glue = write_mrpc(root / "glue")
    args = tiny(glue, "callbacks.last_checkpoint.keep=true", "trainer.num_sanity_val_steps=0")
    summary = run(compose_config(args, root / "run"))
    return root / "run", summary, glue


def test_run_dir_reloads_bit_exactly_and_evaluates_the_same(trained, tmp_path):
    from safetensors.torch import load_file

    from saten.lit import load_run
    from saten.train import run

    run_dir, summary, glue = trained
    module = load_run(run_dir)
    saved = load_file(run_dir / "model.safetensors")
    assert_same_tensors({k: v for k, v in module.model.state_dict().items() if k in saved}, saved)
    report = json.loads((run_dir / "report.json").read_text())
    ranks = {row["name"]: row["ranks"] for row in report["layers"]}
    assert {name: list(r) for name, (r, _) in structure(module.model).items()} == ranks
    evaluated = run(compose_config([*tiny(glue), "train=false", f"ckpt_path={run_dir}"], tmp_path))
    for key in ("val/f1", "val/accuracy", "val/loss"):
        assert evaluated[key] == pytest.approx(summary[key], abs=1e-6), key


def test_lightning_checkpoint_reloads_with_its_own_ranks(trained, tmp_path):
    from saten.reload import load_checkpoint

    run_dir, _, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["saten"]["eps"] = 0.3  # a fresh compression now gives other ranks
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    module = load_checkpoint(tmp_path / "edited.ckpt")
    assert_same_tensors(module.state_dict(), checkpoint["state_dict"])
    from saten.lit import GlueClassifier

    fresh = GlueClassifier(**checkpoint["hyper_parameters"])
    assert structure(fresh.model) != structure(module.model)


@pytest.mark.parametrize("saten", [
    {"method": "saten", "eps": 0.5, "density": 0.1, "embeddings": True},
    {"method": "saten", "eps": 0.5, "sparsity": "nm", "nm": [2, 4]},
    {"method": "svd", "svd_ratio": 0.5},
])
def test_match_state_rebuilds_the_saved_structure(saten, tiny_bert_cfg):
    torch.manual_seed(0)
    source = load_model(tiny_bert_cfg, num_labels=2)
    compress(source, saten)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    torch.manual_seed(1)  # another random init: a fresh compression gets other ranks
    target = load_model(tiny_bert_cfg, num_labels=2)
    compress(target, saten | ({"svd_ratio": 0.25} if saten["method"] == "svd" else {"eps": 0.3}))
    assert structure(target) != structure(source)
    rebuilt = load_state_exact(target, state)
    assert rebuilt and structure(target) == structure(source)
    assert_same_tensors(target.state_dict(), state)
    batch = {"input_ids": torch.randint(0, 1000, (2, 12)),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    source.eval(), target.eval()
    assert torch.equal(source(**batch).logits, target(**batch).logits)
    assert match_state(target, state) == []  # already matching: nothing rebuilt
