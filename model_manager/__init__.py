"""model-manager: inspect, convert and serve per-symbol XGBoost model directories."""

__version__ = "0.1.0"
