"""enclave-aml: cross-bank AML detection inside a confidential-computing enclave."""

__version__ = "0.1.0"
