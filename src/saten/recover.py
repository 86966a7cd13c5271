"""Task-agnostic recovery: re-fit the compressed layers to the dense model's hidden states on plain text.

Compression at ε 0.85 removes most of what a small model's fine-tuning needs (the no-training diagnostic of
``results/mrpc_ablation_minilm``), and a GLUE training set is too small to rebuild it. Recovery runs between
compression and fine-tuning: for ``recover.steps`` steps it trains only the compressed layers (TT cores,
sparse values, SVD factors) so that every hidden state of the compressed backbone matches the uncompressed
one (the layer-wise hidden-state MSE of ``saten.distill``, as in TinyBERT's general distillation) on
chunks of an unlabeled text corpus (default tinyshakespeare, never an evaluated split). The reference is
the model the student was compressed from: the pretrained backbone, or the fine-tuned teacher with
``distill.init_from_teacher``.

The result depends only on the compressed weights, the reference and the ``recover`` config, so it is
cached under ``<paths.cache_dir>/recovered/``: the seeds and tasks of a sweep that compress the same way
recover once.
The summary records the held-out relative hidden-state error before and after (``recover/error_before``,
``recover/error_after``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from saten.errors import ConfigError

log = logging.getLogger(__name__)


def recover_enabled(cfg: Mapping | None) -> bool:
    """True when the ``recover`` group asks for steps."""
    return bool((cfg or {}).get("steps"))


def check_recover_config(cfg: Mapping | None, saten: Mapping, schedule: Mapping | None = None) -> None:
    """One-line errors for bad ``recover`` values (before any model is loaded)."""
    cfg = cfg or {}
    steps = cfg.get("steps") or 0
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ConfigError(f"recover.steps={steps}: use a whole number >= 0 (0 = off)")
    if not steps:
        return
    for key, low in (("batch_size", 1), ("seq_len", 8), ("holdout", 1)):
        value = cfg.get(key)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"recover.{key}={value}: use a whole number >= {low}")
    if not float(cfg.get("lr") or 0) > 0:
        raise ConfigError(f"recover.lr={cfg.get('lr')}: must be > 0, e.g. 3e-4")
    if saten.get("method") in (None, "dense"):
        raise ConfigError("recover.steps>0 with saten=dense: recovery re-fits compressed layers; use "
                          "recover=none for a dense run")
    from saten.progressive import schedule_enabled

    if schedule_enabled(schedule):
        raise ConfigError("recover.steps>0 with schedule=progressive: recovery fits the final structure "
                          "once; use one of them (recover=none or schedule=none)")


def _unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a PEFT wrapper (if any)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def recovered_parameters(model: nn.Module, replaced: list[str]) -> dict[str, nn.Parameter]:
    """The parameters recovery trains: those of the replaced modules, by qualified name."""
    hf = _unwrap(model)
    modules = dict(hf.named_modules())
    return {f"{name}.{pname}": p for name in replaced for pname, p in modules[name].named_parameters()}


def text_chunks(tokenizer, text: str, seq_len: int, cache_dir=None, name: str = "recover") -> torch.Tensor:
    """Non-overlapping chunks of ``text`` wrapped in the tokenizer's special tokens: ``(n, seq_len)``."""
    from saten.data.lm import tokenize_stream

    ids = tokenize_stream(text, tokenizer, cache_dir, name=name)
    prefix, suffix = special_tokens(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    chunks = ids[: len(ids) // body * body].view(-1, body)
    n = len(chunks)
    return torch.cat([torch.tensor([prefix] * n, dtype=torch.int64).view(n, -1), chunks,
                      torch.tensor([suffix] * n, dtype=torch.int64).view(n, -1)], dim=1)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (BERT: [CLS] / [SEP]; LLaMA: BOS / none)."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full) - len(body) + 1) if full[i:i + len(body)] == body)
    return full[:start], full[start + len(body):]


def _batches(chunks: torch.Tensor, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(chunks), generator=generator)])
        yield chunks[order[:batch_size]]
        order = order[batch_size:]


def _hidden(backbone: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    ids = ids.to(next(backbone.parameters()).device)
    out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return out.hidden_states


@torch.no_grad()
def relative_error(student: nn.Module, reference: nn.Module, chunks: torch.Tensor, batch_size: int) -> float:
    """Σ‖h_student − h_reference‖² / Σ‖h_reference‖² over every hidden state of ``chunks``."""
    diff = norm = 0.0
    for start in range(0, len(chunks), batch_size):
        ids = chunks[start:start + batch_size]
        for s, t in zip(_hidden(student, ids), _hidden(reference, ids), strict=True):
            diff += float((s.float() - t.float()).square().sum())
            norm += float(t.float().square().sum())
    return diff / norm


def fit(student: nn.Module, reference: nn.Module, params: list[nn.Parameter], chunks: torch.Tensor,
        cfg: Mapping) -> list[float]:
    """Train ``params`` of ``student`` (a backbone) towards ``reference``'s hidden states; step losses."""
    from saten.distill import Distiller  # its layer-wise hidden-state MSE

    optimizer = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=0.0)
    losses = []
    for step, ids in enumerate(_batches(chunks, cfg["batch_size"], cfg["steps"], int(cfg.get("seed") or 0))):
        with torch.no_grad():
            target = _hidden(reference, ids)
        loss = Distiller._hidden_term(_hidden(student, ids), target, None)  # chunks: no padding
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg["steps"] - 1:
            log.info("recover: step %d/%d, hidden MSE %.4g", step + 1, cfg["steps"], losses[-1])
    return losses


def cache_key(params: Mapping[str, torch.Tensor], reference_id: str, cfg: Mapping) -> str:
    """Hash of the compressed values before recovery, the reference's identity and the recover config."""
    digest = hashlib.sha256(json.dumps({"reference": reference_id, "recover": dict(cfg)}, sort_keys=True,
                                       default=str).encode())
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(params[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def recover(model: nn.Module, replaced: list[str], reference: nn.Module, text: str, tokenizer,
            cfg: Mapping, cache_dir: str | Path | None = None, reference_id: str = "") -> dict:
    """Re-fit the replaced layers of ``model`` (in place) to ``reference``'s hidden states on ``text``.

    Parameters
    ----------
    model : nn.Module
        The compressed Hugging Face model (any head; a PEFT wrapper is unwrapped).
    replaced : list of str
        Qualified names of its compressed modules (``saten.compress`` returns them).
    reference : nn.Module
        The uncompressed model it was compressed from (any head), frozen here.
    text : str
        Unlabeled text; its last ``cfg["holdout"]`` chunks only measure the error.
    cfg : Mapping
        The ``recover`` config group.
    cache_dir : path, optional
        Where recovered values are cached (``None``: no cache).

    Returns
    -------
    dict
        ``recover/error_before``, ``recover/error_after``, ``recover/steps``, ``recover/cached``.
    """
    from safetensors.torch import load_file, save_file

    hf = _unwrap(model)
    student, teacher = hf.base_model, _unwrap(reference).base_model.eval().requires_grad_(False)
    params = recovered_parameters(model, replaced)
    token_cache = None if cache_dir is None else Path(cache_dir) / "data"
    chunks = text_chunks(tokenizer, text, cfg["seq_len"], token_cache)
    if len(chunks) <= cfg["holdout"]:
        raise ConfigError(f"recover.corpus={cfg.get('corpus')}: {len(chunks)} chunks of {cfg['seq_len']} "
                          f"tokens, not more than recover.holdout={cfg['holdout']}; use a longer text")
    train, held_out = chunks[:-cfg["holdout"]], chunks[-cfg["holdout"]:]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "recovered" / f"{cache_key(params, reference_id, cfg)}.safetensors"
    was_training, home = hf.training, next(hf.parameters()).device
    flags = {name: p.requires_grad for name, p in hf.named_parameters()}
    hf.eval().requires_grad_(False)  # no dropout: the target is the deterministic dense output
    if torch.cuda.is_available():  # the run's model is still on the CPU here; Lightning moves it later
        hf.cuda()
        teacher.cuda()
    try:
        before = relative_error(student, teacher, held_out, cfg["batch_size"])
        cached = path is not None and path.is_file()
        if cached:
            values = load_file(str(path))
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(values[name])
        else:
            for p in params.values():
                p.requires_grad_(True)
            fit(student, teacher, list(params.values()), train, cfg)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(path))
        after = relative_error(student, teacher, held_out, cfg["batch_size"])
    finally:
        for name, p in hf.named_parameters():
            p.requires_grad_(flags[name])
        hf.train(was_training).to(home)
        teacher.cpu()
    log.info("recover: held-out hidden-state error %.4f -> %.4f (%s)", before, after,
             "cached" if cached else f"{cfg['steps']} steps")
    return {"recover/error_before": before, "recover/error_after": after, "recover/steps": cfg["steps"],
            "recover/cached": cached}


def recover_run(module, cfg) -> dict:
    """:func:`recover` for a freshly built run module (``module.model``, ``module.replaced``) of ``cfg``."""
    from saten.data.lm import resolve_train_file
    from saten.lit.classification import to_plain
    from saten.models import load_model, load_tokenizer

    rcfg = to_plain(cfg.recover)
    distill = cfg.get("distill") or {}
    if distill.get("init_from_teacher"):  # the student was compressed from the fine-tuned teacher
        from saten.distill import load_teacher

        reference, reference_id = load_teacher(distill, cfg.task.name), f"teacher:{distill.teacher}"
    else:
        with torch.random.fork_rng():  # a random-init (tiny) model: the init the run's model got
            torch.manual_seed(int(cfg.seed))
            reference = load_model(cfg.model, head="base")
        reference_id = json.dumps(to_plain(cfg.model), sort_keys=True, default=str)
    text = resolve_train_file(rcfg.get("corpus"), cfg.paths.get("data_dir"), key="recover.corpus")
    if text is None:
        raise ConfigError("recover.corpus=null: recovery needs unlabeled text; e.g. "
                          "recover.corpus=tinyshakespeare")
    module.recovery = recover(module.model, module.replaced, reference, text.read_text(encoding="utf-8"),
                              load_tokenizer(cfg.model), rcfg, cfg.paths.get("cache_dir"), reference_id)
    return module.recovery
