"""Determinism: the same seed and config give the same metrics (to 1e-6 on CPU), also with
``trainer.deterministic=true``; another seed gives other ones.
"""

from __future__ import annotations

import pytest
from test_pipeline import compose_config
from test_validate import tiny, write_mrpc

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec",
                                        "ignore:.*does not have many workers")
KEYS = ("best/f1", "best/accuracy", "best/loss", "val/loss", "ratio", "params")


def test_same_seed_same_metrics_deterministic_algorithms(tmp_path):
    from saten.train import run

    glue = write_mrpc(tmp_path / "glue")
    args = tiny(glue, "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0", "optim.lr=1e-3",
                "trainer.deterministic=true")
    first = run(compose_config(args, tmp_path / "a"))
    second = run(compose_config(args, tmp_path / "b"))
    other = run(compose_config([*args, "seed=2"], tmp_path / "c"))
    for key in KEYS:
        assert second[key] == pytest.approx(first[key], abs=1e-6), key
    assert other["val/loss"] != pytest.approx(first["val/loss"], abs=1e-6)
    assert not (tmp_path / "a" / "checkpoints" / "last.ckpt").exists()  # removed once the run completed
