"""Detection inside the enclave: graph, typology detectors, pooled model, per-bank alerts.

Entry point: `aml.enclave.detect.pipeline.run_detection(merged, config) -> DetectionResult`.
"""
