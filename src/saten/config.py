"""The ``saten`` and ``tt_shape`` configuration: one dataclass each, validated up front.

Knobs that the chosen method does not use are dropped with a one-line warning and recorded as ``None``,
so that ``saten.method=svd`` on top of the Saten defaults never silently applies ε or a density.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from saten.errors import ConfigError

__all__ = ["METHODS", "SatenConfig", "TTShapeConfig"]

log = logging.getLogger(__name__)

METHODS = ("saten", "tt", "svd", "dense")
DEFAULT_SVD_RATIO = 0.33
_COMMON = {"method", "targets", "exclude", "overrides", "freeze"}
USES = {
    "saten": _COMMON | {"eps", "max_rank", "density", "sparsity", "nm", "embeddings", "target_ratio"},
    "tt": _COMMON | {"eps", "max_rank", "embeddings", "target_ratio"},
    "svd": _COMMON | {"svd_ratio"},
    "dense": {"method", "freeze"},
}
_NULL_DEFAULTS = {"embeddings": False, "exclude": None, "overrides": None, "targets": None, "freeze": False}


def _plain(value):
    """OmegaConf containers to plain Python (lists, dicts)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


@dataclass
class SatenConfig:
    """What to compress and how (the ``saten`` config group).

    Attributes
    ----------
    method : {"saten", "tt", "svd", "dense"}
    eps : float
        TT-SVD relative error bound (saten, tt).
    max_rank : int, optional
        Cap on TT ranks.
    density : float
        Fraction of each layer's entries kept in the residual (saten, unstructured).
    sparsity : {"unstructured", "nm"}
    nm : [N, M]
        Structured pattern for ``sparsity="nm"`` (density N/M).
    targets : None | str | list of str
        ``None``: the architecture's default Linears; a string: regex full-matched against module names, or
        ``"all-linear"``; a list: name suffixes.
    exclude : None | str | list of str
        Same forms; removed from the targets.
    embeddings : bool
        Also compress the input embedding table (Saten(e)).
    svd_ratio : float
        Parameter ratio kept by the SVD baseline, in (0, 1].
    overrides : dict, optional
        ``{pattern: {eps: …, density: …, max_rank: …}}`` per layer (regex full-match or suffix).
    freeze : bool
        Freeze compressed layers after compression (LoRA-on-frozen protocol).
    target_ratio : float, optional
        Global budget (saten, tt): choose ε (and top up the density) so that the targeted ratio hits this
        value (:mod:`saten.budget`); the given ``eps`` is then ignored and ``density`` is a floor.
    """

    method: str = "saten"
    eps: float | None = 0.6
    max_rank: int | None = None
    density: float | None = 0.1
    sparsity: str | None = "unstructured"
    nm: list[int] | None = None
    targets: str | list[str] | None = None
    exclude: str | list[str] | None = None
    embeddings: bool = False
    svd_ratio: float | None = None
    overrides: dict | None = None
    freeze: bool = False
    target_ratio: float | None = None
    dropped: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_any(cls, cfg: SatenConfig | Mapping | None = None, warn: bool = True, **changes) -> SatenConfig:
        """Build from a mapping (DictConfig ok), drop unused knobs and validate."""
        if isinstance(cfg, SatenConfig):
            data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.name != "dropped"}
        else:
            data = dict(_plain(cfg) or {})
        data.update(changes)
        known = {f.name for f in dataclasses.fields(cls)} - {"dropped"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"saten.{unknown[0]}: unknown key; valid keys are {', '.join(sorted(known))}")
        config = cls(**data)
        config._drop_unused(warn, given=set(data))
        config.validate()
        return config

    def _drop_unused(self, warn: bool, given: set[str]) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"saten.method={self.method}: unknown method; use one of {', '.join(METHODS)}")
        uses = set(USES[self.method])
        if self.method == "saten":
            uses -= {"nm"} if self.sparsity != "nm" else {"density"}
        for name in sorted({f.name for f in dataclasses.fields(self)} - uses - {"dropped"}):
            value = getattr(self, name)
            default = _NULL_DEFAULTS.get(name)
            if value is not None and value != default and value != []:
                self.dropped.append(name)
                if warn and name in given:  # a class default the caller never set is not worth a warning
                    log.warning(
                        "saten.%s=%s is not used by method=%s; dropped (recorded as null)",
                        name,
                        value,
                        self.method,
                    )
            setattr(self, name, default)

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line: key, value, fix) on values the method cannot use."""
        m = self.method
        if m in ("saten", "tt"):
            _need(self.eps is not None and self.eps >= 0, "eps", self.eps, "use eps >= 0, e.g. saten.eps=0.6")
        if m == "saten":
            _need(
                self.sparsity in ("unstructured", "nm"), "sparsity", self.sparsity, "use unstructured or nm"
            )
            if self.sparsity == "unstructured":
                _need(
                    self.density is not None and 0 <= self.density <= 1,
                    "density",
                    self.density,
                    "use a fraction in [0, 1], e.g. saten.density=0.1",
                )
            else:
                ok = isinstance(self.nm, (list, tuple)) and len(self.nm) == 2 and 0 < self.nm[0] < self.nm[1]
                _need(ok, "nm", self.nm, "use [N, M] with 0 < N < M, e.g. saten.nm=[2,4]")
                self.nm = [int(self.nm[0]), int(self.nm[1])]
        if m in ("saten", "tt") and self.max_rank is not None:
            _need(int(self.max_rank) >= 1, "max_rank", self.max_rank, "use an integer >= 1 or null")
        if m == "svd" and self.svd_ratio is None:  # e.g. saten.method=svd on top of the saten_u file
            log.warning("saten.svd_ratio is not set; using %s (the svd file's default)", DEFAULT_SVD_RATIO)
            self.svd_ratio = DEFAULT_SVD_RATIO
        if m == "svd":
            _need(
                self.svd_ratio is not None and 0 < self.svd_ratio <= 1,
                "svd_ratio",
                self.svd_ratio,
                "use a ratio in (0, 1], e.g. saten.svd_ratio=0.33",
            )
        if self.target_ratio is not None:
            _need(0 < self.target_ratio <= 1, "target_ratio", self.target_ratio,
                  "use a ratio in (0, 1], e.g. saten.target_ratio=0.33, or null")
            _need(not self.overrides and not self.embeddings, "target_ratio", self.target_ratio,
                  "the global budget covers the Linear targets only; drop saten.overrides/embeddings or set "
                  "saten.target_ratio=null")
        for key in ("targets", "exclude"):
            value = getattr(self, key)
            _need(
                value is None or isinstance(value, (str, list, tuple)),
                key,
                value,
                "use a regex string, 'all-linear' or a list of name suffixes",
            )

    @property
    def effective_density(self) -> float:
        """Kept fraction of each layer: ``density``, N/M for N:M, 0 for TT-only."""
        if self.method != "saten":
            return 0.0
        return self.nm[0] / self.nm[1] if self.sparsity == "nm" else float(self.density)

    def for_layer(self, **changes) -> SatenConfig:
        """A copy with per-layer overrides applied (validated, no warnings)."""
        return dataclasses.replace(self, dropped=[], **changes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "dropped"}


def _need(ok: bool, key: str, value, fix: str) -> None:
    if not ok:
        raise ConfigError(f"saten.{key}={value}: invalid; {fix}")


@dataclass
class TTShapeConfig:
    """Tensor shape of the TT part (the ``tt_shape`` config group).

    Attributes
    ----------
    in_order, out_order : int
        Number of input and output modes (the authors use 2 and 2).
    layout : {"plain", "matrix"}
    shapes : dict, optional
        Explicit factorizations ``{pattern: [[n_1, …], [m_1, …]]}`` (regex full-match or name suffix).
    """

    in_order: int = 2
    out_order: int = 2
    layout: str = "plain"
    shapes: dict | None = None

    @classmethod
    def from_any(cls, cfg: TTShapeConfig | Mapping | None = None) -> TTShapeConfig:
        if isinstance(cfg, TTShapeConfig):
            return cfg
        data = {k: v for k, v in dict(_plain(cfg) or {}).items() if k != "name"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"tt_shape.{unknown[0]}: unknown key; valid keys are {', '.join(sorted(known))}"
            )
        config = cls(**data)
        for key in ("in_order", "out_order"):
            value = getattr(config, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"tt_shape.{key}={value}: invalid; use an integer >= 1 (the paper uses 2)")
        if config.layout not in ("plain", "matrix"):
            raise ConfigError(f"tt_shape.layout={config.layout}: invalid; use plain or matrix")
        if config.layout == "matrix" and config.in_order != config.out_order:
            raise ConfigError(
                f"tt_shape.layout=matrix with in_order={config.in_order} != out_order="
                f"{config.out_order}: the interleaved layout needs equal orders"
            )
        return config
