"""The ten typology detectors, one module per family, and the registry the pipeline uses."""

from __future__ import annotations

from aml.detect.typologies.base import PatternInstance, TypologyDetector
from aml.detect.typologies.bipartite import BipartiteDetector, StackDetector
from aml.detect.typologies.chain import PassThroughDetector, RandomChainDetector
from aml.detect.typologies.cycle import CycleDetector
from aml.detect.typologies.fan import FanInDetector, FanOutDetector
from aml.detect.typologies.scatter import GatherScatterDetector, ScatterGatherDetector
from aml.detect.typologies.structuring import StructuringDetector

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
