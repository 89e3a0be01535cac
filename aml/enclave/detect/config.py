"""Detection configuration: one TOML file, hashed so every run records which settings it used."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from aml.core.errors import ConfigError
from aml.core.schema import CURRENCIES

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.toml")

DETECTOR_SECTIONS = (
    "fan_out", "fan_in", "scatter_gather", "gather_scatter", "cycle", "bipartite",
    "stack", "random_chain", "structuring", "pass_through",
)


def _freeze(value: Any) -> Any:
    """Read-only view of nested TOML tables, so a frozen config stays frozen."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class DetectionConfig:
    """Parsed detection settings. Build with `DetectionConfig.load(path)`."""

    raw: Mapping[str, Any]
    hash: str
    path: Path | None = None
    base_currency: str = "USD"
    rates: Mapping[str, float] = field(default_factory=dict)
    source: bytes = field(default=b"", repr=False)  # the TOML bytes `hash` is taken over

    @classmethod
    def load(cls, path: Path | str | None = None) -> "DetectionConfig":
        path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read detection config {path.name}: {exc.strerror}") from None
        return cls.from_bytes(data, path=path)

    @classmethod
    def from_bytes(cls, data: bytes, path: Path | None = None) -> "DetectionConfig":
        try:
            raw = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"detection config is not valid TOML: {exc}") from None
        currency = raw.get("currency", {})
        base = currency.get("base", "USD")
        rates = {str(k): float(v) for k, v in currency.get("rates", {}).items()}
        missing = sorted(CURRENCIES - rates.keys())
        if missing:
            raise ConfigError(f"detection config [currency.rates] lacks {', '.join(missing)}")
        if any(r <= 0 for r in rates.values()):
            raise ConfigError("detection config [currency.rates] has a non-positive rate")
        if rates.get(base) != 1.0:
            raise ConfigError("detection config: the base currency's rate must be 1.0")
        for name in DETECTOR_SECTIONS:
            if name in raw and not isinstance(raw[name], dict):
                raise ConfigError(f"detection config [{name}] must be a table")
        return cls(
            raw=_freeze(raw),
            hash=hashlib.sha256(data).hexdigest(),
            path=path,
            base_currency=base,
            rates=MappingProxyType(rates),
            source=data,
        )

    def __reduce__(self):
        # Read-only mapping views do not pickle; rebuild from the bytes (same hash).
        return (DetectionConfig.from_bytes, (self.source, self.path))

    def section(self, name: str) -> Mapping[str, Any]:
        """One TOML table (empty when absent)."""
        return self.raw.get(name, MappingProxyType({}))

    @property
    def model(self) -> Mapping[str, Any]:
        return self.section("model")

    def hub_degree(self, days: float) -> int:
        """Degree above which an account is a hub, for data covering `days` days."""
        g = self.section("graph")
        return int(max(g.get("hub_min_degree", 200), g.get("hub_degree_per_day", 20) * days))

    def enabled(self, detector: str) -> bool:
        return bool(self.section(detector).get("enabled", True))
