"""The ten typology detectors, one module per family, and the registry the pipeline uses."""

from __future__ import annotations

from aml.enclave.detect.typologies.base import PatternInstance, TypologyDetector
from aml.enclave.detect.typologies.bipartite import BipartiteDetector, StackDetector
from aml.enclave.detect.typologies.chain import PassThroughDetector, RandomChainDetector
from aml.enclave.detect.typologies.cycle import CycleDetector
from aml.enclave.detect.typologies.fan import FanInDetector, FanOutDetector
from aml.enclave.detect.typologies.scatter import GatherScatterDetector, ScatterGatherDetector
from aml.enclave.detect.typologies.structuring import StructuringDetector

DETECTORS: dict[str, type[TypologyDetector]] = {
    cls.name: cls
    for cls in (FanOutDetector, FanInDetector, ScatterGatherDetector, GatherScatterDetector,
                CycleDetector, BipartiteDetector, StackDetector, RandomChainDetector,
                StructuringDetector, PassThroughDetector)
}


def build_detectors(config) -> list[TypologyDetector]:
    """One detector per enabled TOML section, in a fixed order."""
    return [cls.from_config(config) for name, cls in DETECTORS.items() if config.enabled(name)]


__all__ = ["DETECTORS", "PatternInstance", "TypologyDetector", "build_detectors"]
