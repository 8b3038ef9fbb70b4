"""retrain-platform: keep one model per customer fresh, with Dagster, MLflow and great-expectations."""

__version__ = "0.1.0"
