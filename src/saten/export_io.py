"""Save and reload an exported model (:func:`saten.export.export`): safetensors plus a small JSON.

An all-``merged`` export is an ordinary model: :func:`save_exported` writes it with ``save_pretrained``,
so plain ``transformers`` ``from_pretrained`` loads it. Any other export writes the model's
``config.json``, the inference tensors as ``saten_export.safetensors`` (a name ``from_pretrained`` does not
pick up by mistake) and ``saten_export.json`` with the structure of each exported module; the training-time
parameters (TT cores, kept values, positions) are not saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from saten.compress import _set_module
from saten.inference_embedding import FactorizedEmbedding, FactorizedTiedHead
from saten.inference_layers import (
    FactorizedTTLinear,
    SemiStructuredLinear,
    semi_structured_available,
)

__all__ = ["load_exported", "save_exported"]

STRUCTURE = "saten_export.json"
WEIGHTS = "saten_export.safetensors"
LAYER_KINDS = {"factorized": FactorizedTTLinear, "semi_structured": SemiStructuredLinear}


def _dtype_name(model: nn.Module) -> str:
    tensor = next(iter(model.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(model.buffers()))
    return str(tensor.dtype).removeprefix("torch.")


def save_exported(model: nn.Module, directory: str | Path) -> Path:
    """Write the exported ``model`` into ``directory``; returns the directory.

    Raises
    ------
    ValueError
        When ``model`` was not exported (it has no ``saten_export``) or has no ``save_pretrained``.
    """
    formats = getattr(model, "saten_export", None)
    if formats is None or not hasattr(model, "config"):
        raise ValueError("save_exported needs a transformers model passed through saten.export(model) first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"formats": formats, "dtype": _dtype_name(model), "architecture": type(model).__name__}
    if all(fmt == "merged" for fmt in formats.values()):
        model.save_pretrained(directory)
        info["plain"] = True
    else:
        from safetensors.torch import save_model

        model.config.save_pretrained(directory)
        info["plain"] = False
        # merged modules are the architecture's own nn.Linear / nn.Embedding: nothing to rebuild
        info["modules"] = {n: model.get_submodule(n).spec() for n, fmt in formats.items() if fmt != "merged"}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if isinstance(head, FactorizedTiedHead):
            info["tied_head"] = {"bias": head.bias is not None}
        save_model(model, str(directory / WEIGHTS))
    (directory / STRUCTURE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save_exported` (eval mode, ``saten_export`` set)."""
    import transformers

    directory = Path(directory)
    if not (directory / STRUCTURE).is_file():
        raise FileNotFoundError(f"{directory}: no {STRUCTURE}; not a folder written by save_exported")
    info = json.loads((directory / STRUCTURE).read_text())
    cls = getattr(transformers, info["architecture"])
    dtype = getattr(torch, info["dtype"])
    if info["plain"]:
        model = cls.from_pretrained(directory, dtype=dtype).to(device)
    else:
        model = _load_structured(cls, directory, info, dtype, device)
    model.saten_export = dict(info["formats"])
    return model.eval()


def _load_structured(cls, directory: Path, info: dict, dtype, device) -> nn.Module:
    from safetensors.torch import load_model
    from transformers import AutoConfig

    model = cls(AutoConfig.from_pretrained(directory)).to(dtype=dtype, device=device)
    embedding = None
    for name, spec in info["modules"].items():
        if spec["kind"] == "semi_structured" and (reason := semi_structured_available(device)):
            raise ValueError(f"{directory}: layer {name} is semi_structured, which {reason}; "
                             "export again with format='factorized' or 'merged'")
        if spec["kind"] == "factorized_embedding":
            embedding = FactorizedEmbedding.from_spec(spec, dtype=dtype, device=device)
            model.set_input_embeddings(embedding)
        else:
            _set_module(model, name, LAYER_KINDS[spec["kind"]].from_spec(spec, dtype=dtype, device=device))
    if "tied_head" in info:
        bias = torch.zeros(embedding.num_embeddings, dtype=dtype) if info["tied_head"]["bias"] else None
        model.set_output_embeddings(FactorizedTiedHead(embedding, bias))
    load_model(model, str(directory / WEIGHTS), strict=True, device=str(device))
    return model
