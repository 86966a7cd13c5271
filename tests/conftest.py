"""Shared test setup: offline environment, the shared data folder, and tiny model configs.

The environment is set at import, before any test module imports transformers or huggingface_hub (both read
HF_HUB_OFFLINE once, when first imported).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
# Persistent, git-ignored cache shared with run.py's default (paths.cache_dir = <repo>/.cache): the SmolLM2
# tokenizer is converted from the GGUF once (~10 s), not once per test session. Writes are atomic.
SMOLLM2_CACHE_DIR = REPO_ROOT / ".cache" / "models" / "smollm2_135m"

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.environ.get("SATEN_DATA_DIR") and (REPO_ROOT.parent / "shared" / "data").is_dir():
    os.environ["SATEN_DATA_DIR"] = str((REPO_ROOT.parent / "shared" / "data").resolve())


def _materialize_glue_fixtures() -> Path:
    """The invented GLUE fixture rows (``tests/fixtures/glue/<TASK>/<split>.rows``) as a GLUE folder of
    ``<split>.tsv`` files in a temporary directory, written once per test session (no TSV is tracked)."""
    import atexit
    import shutil
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="saten-glue-fixtures-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    for rows in (Path(__file__).parent / "fixtures" / "glue").glob("*/*.rows"):
        (target / rows.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(rows, target / rows.parent.name / f"{rows.stem}.tsv")
    return target


FIXTURE_GLUE = _materialize_glue_fixtures()


def load_model_cfg(name: str, cache_dir: Path | None = SMOLLM2_CACHE_DIR) -> dict:
    """``conf/model/<name>.yaml`` as a dict; ``cache_dir`` replaces its ``${paths...}`` value."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"), resolve=False)
    if "cache_dir" in cfg:
        cfg["cache_dir"] = str(cache_dir)
    return cfg


@pytest.fixture
def model_cfg_loader():
    """``load_model_cfg``: any ``conf/model/<name>.yaml`` as a dict (``cache_dir`` may be overridden)."""
    return load_model_cfg


@pytest.fixture
def tiny_bert_cfg() -> dict:
    """``conf/model/tiny_bert.yaml`` (random-init 2-layer BERT, hidden 32, MiniLM tokenizer)."""
    return load_model_cfg("tiny_bert")


@pytest.fixture
def tiny_llama_cfg() -> dict:
    """``conf/model/tiny_llama.yaml`` (random-init 2-layer LLaMA, hidden 64, GQA 4/2, SmolLM2 tokenizer)."""
    return load_model_cfg("tiny_llama")


@pytest.fixture
def data_dir() -> Path:
    """The shared, read-only data folder (``SATEN_DATA_DIR``); skips the test when it is absent."""
    path = Path(os.environ.get("SATEN_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data folder not found: {path} (set SATEN_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def mini_glue(tmp_path_factory) -> Path:
    """A tiny GLUE folder built from the shared data (skips when the shared data folder is absent)."""
    from test_pipeline import make_mini_glue

    source = Path(os.environ.get("SATEN_DATA_DIR", REPO_ROOT.parent / "shared" / "data")) / "glue"
    if not (source / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"shared GLUE data not found under {source}")
    return make_mini_glue(tmp_path_factory.mktemp("glue"), source)
