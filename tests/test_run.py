"""``run.py`` end to end as a subprocess: train on tiny_bert with W&B (offline) + CSV, read the W&B run file
back, evaluate the saved run (``train=false ckpt_path=<run dir>``), and a bad value exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import compose_config, shrink_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
# lightning 2.6 on torch 2.13 warns about its own pytree use
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")
WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed chunks


def run_py(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python run.py <args>`` with the test environment (offline, src on the path)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def wandb_records(path: Path):
    """Parse the protobuf records of a W&B offline run file (``run-<id>.wandb``)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = 7, b""  # 7-byte file header: magic, 2-byte id, version
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # block trailer (zero padding)
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_summary(run_dir: Path) -> dict:
    """The final W&B run summary, rebuilt from the summary records of the offline run file."""
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    summary = {}
    for record in wandb_records(files[0]):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return summary


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run through run.py (W&B offline + CSV); returns its run dir."""
    from test_pipeline import make_mini_glue

    source = Path(os.environ.get("SATEN_DATA_DIR", REPO_ROOT.parent / "shared" / "data")) / "glue"
    if not (source / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"shared GLUE data not found under {source}")
    root = tmp_path_factory.mktemp("run")
    glue = make_mini_glue(root / "glue", source)
    run_dir = root / "train"
    overrides = [o for o in shrink_overrides(glue, "mrpc", "saten_u") if not o.startswith("logger=")]
    result = run_py([*overrides, "logger=many", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir, glue


def test_run_writes_the_run_dir(trained_run):
    run_dir, _ = trained_run
    for name in ("summary.json", "report.json", "compression_layers.csv", "provenance.json", "config.yaml",
                 "model.safetensors", "checkpoints/best.ckpt", "csv/metrics.csv", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("density", "eps", "method", "ratio", "model_ratio", "params", "best/f1", "val/f1", "seconds",
                "seed", "task", "model"):
        assert key in summary, key
    assert summary["trained"] and summary["epochs"] == 2
    assert "run.py" in json.loads((run_dir / "provenance.json").read_text())["command"]
    assert "val/f1" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_wandb_offline_run_holds_params_ratio_and_metric(trained_run):
    run_dir, _ = trained_run
    logged = wandb_summary(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("params", "ratio", "model_ratio", "density", "best/f1", "val/f1"):
        assert logged[key] == pytest.approx(summary[key]), key


def test_eval_only_reproduces_the_saved_metric(trained_run, tmp_path):
    run_dir, glue = trained_run
    overrides = [*shrink_overrides(glue, "mrpc", "saten_u"), "train=false", f"ckpt_path={run_dir}"]
    result = run_py([*overrides, f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    trained = json.loads((run_dir / "summary.json").read_text())
    evaluated = json.loads((tmp_path / "summary.json").read_text())
    assert not evaluated["trained"]
    for key in ("val/f1", "val/accuracy", "val/loss", "params", "ratio"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def test_eval_only_from_a_lightning_checkpoint(trained_run, tmp_path):
    from saten.train import run

    run_dir, glue = trained_run
    cfg = compose_config([*shrink_overrides(glue, "mrpc", "saten_u"), "train=false",
                          f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path)
    evaluated = run(cfg)
    trained = json.loads((run_dir / "summary.json").read_text())
    assert evaluated["val/f1"] == pytest.approx(trained["val/f1"], abs=1e-6)


def test_config_error_exits_2_with_one_line(tmp_path):
    result = run_py(["model=tiny_bert", "logger=none", "optim.lr=-1", f"hydra.run.dir={tmp_path}"],
                    cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: optim.lr=-1: ")
    assert "Traceback" not in result.stderr and sum(line.startswith("error:") for line in errors) == 1


def test_default_run_dir_names_task_and_method(mini_glue, tmp_path):
    """No hydra.run.dir: the run dir comes from the ${run_tag:...} resolver (runs/<task>/<tag>/<time>)."""
    result = run_py([*shrink_overrides(mini_glue, "mrpc", "saten_u"), "trainer.fast_dev_run=1",
                     f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = list((tmp_path / "runs" / "mrpc").glob("saten_u_*/*/summary.json"))
    assert len(summaries) == 1, sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))


def test_recipes_started_together_get_their_own_run_dirs(mini_glue, tmp_path):
    """Two recipes that differ only in calibration must never share a folder (same task, method, second)."""
    from saten.train import run_tag

    saten = {"method": "saten", "density": 0.1, "eps": 0.85, "sparsity": "unstructured", "target_ratio": 0.33}
    plain = run_tag("saten_u", saten)
    aware = run_tag("saten_u", saten, {"samples": 128, "alpha": 0.5, "activation_aware": True})
    sens = run_tag("saten_u", saten, {"samples": 128, "sensitivity": True})
    kd = run_tag("saten_u", saten, None, {"kd_weight": 0.5})
    assert len({plain, aware, sens, kd}) == 4 and plain == "saten_u_d0.1_e0.85_t0.33"
    cfg = compose_config([*shrink_overrides(mini_glue), "calibration=activation"], tmp_path)
    from hydra.core.hydra_config import HydraConfig

    assert "_act0.5" in HydraConfig.get().run.dir and cfg.calibration.samples == 128
