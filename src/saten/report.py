"""Compression report: ``python -m saten.report [the same Hydra overrides as run.py] [report.out=PATH]``.

Loads the model, compresses it without training, prints a per-layer table and writes the report JSON
(schema: :func:`saten.accounting.model_report`). Default output:
``<paths.log_dir>/reports/<model>/<saten choice>_d<density>_e<eps>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from saten.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str]):
    """The run.py config with ``overrides`` applied (Hydra compose API, no run dir is created)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    import saten.train  # noqa: F401  (registers the config resolvers)

    os.environ.setdefault("PROJECT_ROOT", str(CONF_DIR.parent))
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(f"{' '.join(overrides)}: {str(err).splitlines()[0]}") from None


def build_report(cfg, progress: bool = True) -> dict:
    """Load ``cfg.model`` with the task's head, compress it with ``cfg.saten``/``cfg.tt_shape``, report."""
    from saten.accounting import model_report
    from saten.compress import compress
    from saten.models import load_model

    task = cfg.get("task", {})
    if task.get("kind", "glue") == "glue":
        regression = task.get("num_labels") == 1
        model = load_model(
            cfg.model,
            head="sequence_classification",
            num_labels=task.get("num_labels"),
            problem_type="regression" if regression else None,
        )
    else:
        model = load_model(cfg.model, head="causal_lm")
    start = time.perf_counter()
    replaced = compress(model, cfg.saten, tt_shape=cfg.tt_shape, progress=progress)
    seconds = time.perf_counter() - start
    return model_report(
        model, replaced, cfg=model.saten_info["config"], seconds=seconds, model_name=cfg.model.get("name")
    )


def print_report(report: dict, console=None) -> None:
    """A rich table: one row per layer, then the totals."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    table = Table(
        title=f"{report['model']} · {report['method']} · eps={report['eps']} · density={report['density']}"
    )
    for col in ("layer", "in→out", "shape", "ranks", "nnz", "params", "ratio", "err TT", "err", "MACs"):
        table.add_column(col, justify="left" if col in ("layer", "shape", "ranks") else "right")
    for row in report["layers"]:
        table.add_row(
            row["name"],
            f"{row['in_features']}→{row['out_features']}",
            str(row["shape"]),
            str(row["ranks"]),
            f"{row['nnz']:,}",
            f"{row['params']:,}",
            f"{row['params'] / row['dense_params']:.3f}",
            _fmt(row["rel_error_tt"]),
            _fmt(row["rel_error"]),
            f"{row['macs']:,}",
        )
    console.print(table)
    t = report["total"]
    console.print(
        f"targeted: {t['params']:,} / {t['dense_params']:,} params, ratio {t['ratio']:.4f} "
        f"({1 / t['ratio']:.2f}x) · model: {t['model_params']:,} / {t['dense_model_params']:,}, "
        f"ratio {t['model_ratio']:.4f} · MACs/token {t['macs']:,} / {t['dense_macs']:,} · "
        f"index bytes {t['index_bytes']:,} · {report['seconds']:.2f} s"
    )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def default_out(cfg) -> Path:
    choice = cfg.hydra.runtime.choices.get("saten", cfg.saten.method)
    name = f"{choice}_d{cfg.saten.density}_e{cfg.saten.eps}.json"
    return Path(str(cfg.paths.log_dir)) / "reports" / str(cfg.model.name) / name


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("report.out=")), None)
    overrides = [a for a in argv if not a.startswith("report.")]
    try:
        cfg = compose(overrides)
        report = build_report(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report)
    path = Path(out) if out else default_out(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
