"""The adversarial suite: `python -m attacks.run` (`make attack`). See docs/threat-model.md."""
