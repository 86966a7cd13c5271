"""Outputs of :mod:`saten.shape_search`: markdown + CSV tables, the Pareto PNG, and ``tt_shape`` configs."""

from __future__ import annotations

from pathlib import Path

from saten.provenance import cpu_model, git_state
from saten.runs import write_csv

__all__ = ["proxy_configs", "provenance_lines", "write_outputs"]


def provenance_lines(command: str) -> list[str]:
    import os

    import torch

    git = git_state()
    revision = f"{git['sha']}{' (dirty)' if git['dirty'] else ''}" if git["sha"] else "unknown"
    return [f"- command: `{command}`", f"- git revision: {revision}",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"]


def _short(pattern: str) -> str:
    return pattern.replace("\\", "").split(".d+.")[-1]


def markdown(model: str, rows: list[dict], command: str, ref_eps: float, top: int = 5) -> str:
    """Per layer type: the reference shape and the ``top`` best candidates."""
    lines = [f"# TT-shape proxy, {model}", "", *provenance_lines(command), "",
             f"Score = relative TT error ‖W − TT‖/‖W‖ at the parameter count the reference shape (balanced, "
             f"plain, 2+2) reaches at ε {ref_eps}, interpolated on each candidate's (params, error) curve "
             f"over ε; mean over the scored layers of the type. Lower is better; no training involved. "
             f"MACs vs reference: MACs per token of the TT part at the candidate's grid point nearest the "
             f"budget over the reference's (the interleaved `matrix` layout contracts core by core and can "
             f"cost far more).", ""]
    for kind in dict.fromkeys(r["type"] for r in rows):
        mine = [r for r in rows if r["type"] == kind]
        ref = next(r for r in mine if r["is_reference"])
        lines += [f"## {_short(kind)} ({mine[0]['in']}→{mine[0]['out']}, {mine[0]['layers']} layer(s), "
                  f"budget {ref['budget_params']:,.0f} params)", "",
                  "| rank | candidate | layout | in factors | out factors | error at budget | vs reference "
                  "| MACs vs reference |", "|---:|---|---|---|---|---:|---:|---:|"]
        for r in [*mine[:top], *([ref] if ref["rank"] > top else [])]:
            lines.append(f"| {r['rank']} | {r['candidate']}{' (reference)' if r['is_reference'] else ''} "
                         f"| {r['layout']} | {r['in_factors']} | {r['out_factors']} | {r['score']:.4f} "
                         f"| {r['score'] - ref['score']:+.4f} | {r['macs_vs_reference']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def proxy_configs(model: str, rows: list[dict], top: int, command: str, max_macs: float | None = None
                  ) -> dict[str, str]:
    """``{file name: YAML}``: per layout, the k-th best shape of every layer type (k = 1..top):
    ``proxy_<model>_<layout>_<k>``; with ``max_macs`` also ``…_macs<max_macs>`` among the candidates with at
    most ``max_macs`` times the reference's MACs per token. A config is written only when every layer type
    has such a candidate."""
    out = {}
    for limit in [None] + ([max_macs] if max_macs is not None else []):
        suffix = "" if limit is None else f"_macs{limit:g}"
        for layout in ("plain", "matrix"):
            for k in range(1, top + 1):
                shapes = {}
                for kind in dict.fromkeys(r["type"] for r in rows):
                    ranked = [r for r in rows if r["type"] == kind and r["layout"] == layout
                              and (limit is None or r["macs_vs_reference"] <= limit)]
                    if len(ranked) >= k:
                        shapes[kind] = [ranked[k - 1]["in_factors"], ranked[k - 1]["out_factors"]]
                if len(shapes) < len({r["type"] for r in rows}):
                    continue  # a layer type without a qualifying candidate: no complete config
                name = f"proxy_{model}_{layout}_{k}{suffix}"
                body = "\n".join(f"  '{kind}': {factors}" for kind, factors in shapes.items())
                among = f"{layout}-layout candidates"
                if limit is not None:
                    among += f" with ≤ {limit:g}x the reference's MACs"
                out[f"{name}.yaml"] = (
                    f"# TT shapes picked by the training-free proxy for {model}: rank {k} per layer type\n"
                    f"# among {among} (scores: results/shape_search/{model}.md). Written by\n"
                    f"#   {command}\n# at git {git_state()['sha']}; pick with tt_shape={name}\n"
                    f"defaults:\n  - balanced\n  - _self_\n\nlayout: {layout}\nshapes:\n{body}\n")
    return out


def write_outputs(model: str, rows: list[dict], points: list[dict], args, command: str) -> list[Path]:
    """Everything :mod:`saten.shape_search` writes; returns the paths."""
    from saten.plots import shape_pareto

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(rows, out / f"{model}.csv"), write_csv(points, out / f"{model}_points.csv")]
    md = out / f"{model}.md"
    md.write_text(markdown(model, rows, command, args.eps) + f"\nPareto plot: `{model}_pareto.png`.\n")
    written.append(md)
    written.append(shape_pareto(points, out / f"{model}_pareto.png",
                                f"{model}: TT error vs parameters per shape candidate (ε grid)"))
    conf = Path(args.conf)
    conf.mkdir(parents=True, exist_ok=True)
    for name, text in proxy_configs(model, rows, args.top, command, args.max_macs).items():
        (conf / name).write_text(text)
        written.append(conf / name)
    return written
