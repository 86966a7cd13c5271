"""Model and tokenizer loaders: packaged MiniLM, packaged SmolLM2 (GGUF), the Hugging Face Hub, tiny configs.

Every loader reads one ``model`` config group (see ``conf/model/*.yaml``)::

    name: minilm            # free-form label used in reports
    source: package_minilm  # package_minilm | gguf_smollm2 | hub | tiny
    pretrained: null        # hub id or local folder (source=hub)
    arch: bert              # bert | llama
    dtype: float32          # float32 | bfloat16 | float16
    device: cpu             # cpu | cuda | auto: where the model is loaded and compressed
    cache_dir: ...          # gguf_smollm2 and tiny llama: where the dequantized copy / tokenizer live
    tiny: {...}             # source=tiny: BertConfig / LlamaConfig keyword arguments
    tokenizer: ...          # source=tiny: package_minilm | gguf_smollm2

The packaged files (the MiniLM folder, the SmolLM2 GGUF and its dequantized cache) live in
:mod:`saten.packaged`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
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
from saten.packaged import (
    CACHE_MARKER,
    _default_cache_dir,
    _quiet_transformers,
    minilm_path,
    smollm2_gguf,
    smollm2_model_dir,
    smollm2_tokenizer_dir,
)

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
DEVICES = ("cpu", "cuda", "auto")


def model_device(model_cfg: Mapping) -> torch.device:
    """Where the model is loaded and compressed: ``model.device`` (``auto``: CUDA when present, else CPU)."""
    device = _choice(model_cfg, "device", DEVICES, "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda: no CUDA device on this machine; use model.device=auto or cpu")
    return torch.device(device)


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
    return model.to(model_device(model_cfg)).eval()  # compression then runs where the weights are
