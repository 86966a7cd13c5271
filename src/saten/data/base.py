"""What every DataModule of the pipeline shares: construction from the ``data`` config group."""

from __future__ import annotations

from collections.abc import Mapping


class FromDataConfig:
    """Mixin giving a DataModule ``from_config(data_cfg, tokenizer, **overrides)``."""

    @classmethod
    def from_config(cls, data_cfg: Mapping, tokenizer, **overrides):
        """Build from the ``data`` config group (minus ``_target_``); non-null ``overrides`` win."""
        kwargs = {str(k): v for k, v in dict(data_cfg).items() if k != "_target_"}
        kwargs |= {k: v for k, v in overrides.items() if v is not None}
        return cls(tokenizer=tokenizer, **kwargs)
