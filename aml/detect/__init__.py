"""Detection inside the enclave: graph, typology detectors, pooled model, per-bank alerts.

Entry point: `aml.detect.pipeline.run_detection(merged, config) -> DetectionResult`.
"""
