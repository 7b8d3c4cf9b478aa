"""The performance benchmark suite of model-manager: `python -m bench` (see bench/README.md)."""
