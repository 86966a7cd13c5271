"""Task-agnostic recovery: re-fit the compressed layers to the dense model's hidden states on plain text.

Compression at ε 0.85 removes most of what a small model's fine-tuning needs (the no-training diagnostic of
``results/mrpc_ablation_minilm``), and a GLUE training set is too small to rebuild it. Recovery runs between
compression and fine-tuning: for ``recover.steps`` steps it trains only the compressed layers (TT cores,
sparse values, SVD factors) so that every hidden state of the compressed backbone matches the uncompressed
one (the layer-wise hidden-state MSE of ``saten.distill``, as in TinyBERT's general distillation) on
chunks of an unlabeled text corpus (default tinyshakespeare, never an evaluated split) or, with
``recover.corpus=task``, on the run's own training examples without labels. The reference is
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
from saten.recover_inputs import TASK_CORPUS, Inputs, count, rows

log = logging.getLogger(__name__)


def recover_enabled(cfg: Mapping | None) -> bool:
    """True when the ``recover`` group asks for steps."""
    return bool((cfg or {}).get("steps"))


def check_recover_config(cfg: Mapping | None, saten: Mapping, schedule: Mapping | None = None,
                         kind: str = "glue") -> None:
    """One-line errors for bad ``recover`` values (before any model is loaded); ``kind`` is the task
    family (``recover.corpus=task`` reads GLUE training examples)."""
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
    if cfg.get("corpus") == TASK_CORPUS and kind != "glue":
        raise ConfigError(f"recover.corpus=task: the task's own examples are read for task.kind=glue only, "
                          f"not {kind}; name a text file, e.g. recover.corpus=tinyshakespeare")
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


def _batches(inputs: Inputs, batch_size: int, steps: int, seed: int) -> Iterator[Inputs]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(count(inputs), generator=generator)])
        yield rows(inputs, order[:batch_size])
        order = order[batch_size:]


def _hidden(backbone: nn.Module, batch: Inputs) -> tuple[torch.Tensor, ...]:
    device = next(backbone.parameters()).device
    return backbone(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True).hidden_states


@torch.no_grad()
def relative_error(student: nn.Module, reference: nn.Module, inputs: Inputs, batch_size: int) -> float:
    """Σ‖h_student − h_reference‖² / Σ‖h_reference‖² over every hidden state of the (unpadded) tokens."""
    diff = norm = 0.0
    for start in range(0, count(inputs), batch_size):
        batch = rows(inputs, slice(start, start + batch_size))
        mask = batch["attention_mask"].to(next(student.parameters()).device).unsqueeze(-1).float()
        for s, t in zip(_hidden(student, batch), _hidden(reference, batch), strict=True):
            diff += float(((s.float() - t.float()).square() * mask).sum())
            norm += float((t.float().square() * mask).sum())
    return diff / norm


def fit(student: nn.Module, reference: nn.Module, params: list[nn.Parameter], inputs: Inputs,
        cfg: Mapping) -> list[float]:
    """Train ``params`` of ``student`` (a backbone) towards ``reference``'s hidden states; step losses."""
    from saten.distill import Distiller  # its layer-wise hidden-state MSE

    optimizer = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=0.0)
    losses = []
    batches = _batches(inputs, cfg["batch_size"], cfg["steps"], int(cfg.get("seed") or 0))
    for step, batch in enumerate(batches):
        with torch.no_grad():
            target = _hidden(reference, batch)
        mask = batch["attention_mask"].to(target[0].device)
        loss = Distiller._hidden_term(_hidden(student, batch), target, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg["steps"] - 1:
            log.info("recover: step %d/%d, hidden MSE %.4g", step + 1, cfg["steps"], losses[-1])
    return losses


def cache_key(params: Mapping[str, torch.Tensor], reference_id: str, cfg: Mapping,
              inputs: Inputs | None = None) -> str:
    """Hash of the compressed values before recovery, the reference's identity and the recover config
    (with ``recover.corpus=task`` also of the examples: tasks, subsets and seeds differ there)."""
    identity = {"reference": reference_id, "recover": dict(cfg)}
    if cfg.get("corpus") == TASK_CORPUS and inputs is not None:
        identity["examples"] = hashlib.sha256(inputs["input_ids"].numpy().tobytes()).hexdigest()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(params[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def recover(model: nn.Module, replaced: list[str], reference: nn.Module, inputs: Inputs, cfg: Mapping,
            cache_dir: str | Path | None = None, reference_id: str = "") -> dict:
    """Re-fit the replaced layers of ``model`` (in place) to ``reference``'s hidden states on ``inputs``.

    Parameters
    ----------
    model : nn.Module
        The compressed Hugging Face model (any head; a PEFT wrapper is unwrapped).
    replaced : list of str
        Qualified names of its compressed modules (``saten.compress`` returns them).
    reference : nn.Module
        The uncompressed model it was compressed from (any head), frozen here.
    inputs : Inputs
        Unlabeled token rows (:mod:`saten.recover_inputs`); the last ``cfg["holdout"]`` only measure the
        error.
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
    if count(inputs) <= cfg["holdout"]:
        raise ConfigError(f"recover.corpus={cfg.get('corpus')}: {count(inputs)} rows of text, not more than "
                          f"recover.holdout={cfg['holdout']}; use a longer text or a smaller holdout")
    train, held_out = rows(inputs, slice(0, -cfg["holdout"])), rows(inputs, slice(-cfg["holdout"], None))
    path = None
    if cache_dir is not None:
        key = cache_key(params, reference_id, cfg, inputs)
        path = Path(cache_dir) / "recovered" / f"{key}.safetensors"
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


def recover_run(module, cfg, datamodule=None) -> dict:
    """:func:`recover` for a freshly built run module (``module.model``, ``module.replaced``) of ``cfg``;
    ``datamodule`` gives the examples of ``recover.corpus=task``."""
    from saten.lit.classification import to_plain
    from saten.models import load_model

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
    module.recovery = recover(module.model, module.replaced, reference, _corpus_inputs(cfg, datamodule), rcfg,
                              cfg.paths.get("cache_dir"), reference_id)
    return module.recovery


def _corpus_inputs(cfg, datamodule) -> Inputs:
    """The rows ``recover.corpus`` names: the task's training examples, or chunks of a text file."""
    from saten.data.lm import resolve_train_file
    from saten.models import load_tokenizer
    from saten.recover_inputs import task_inputs, text_inputs

    corpus = cfg.recover.get("corpus")
    if corpus == TASK_CORPUS:
        return task_inputs(datamodule)
    text = resolve_train_file(corpus, cfg.paths.get("data_dir"), key="recover.corpus")
    if text is None:
        raise ConfigError("recover.corpus=null: recovery needs unlabeled text; e.g. "
                          "recover.corpus=tinyshakespeare or recover.corpus=task")
    cache_dir = cfg.paths.get("cache_dir")
    return text_inputs(load_tokenizer(cfg.model), text.read_text(encoding="utf-8"), cfg.recover.seq_len,
                       None if cache_dir is None else Path(cache_dir) / "data")
