"""Normalise vLLM and SGLang /metrics text into one schema (seconds, bytes), tagged by role.

Driven only by the framework modules' tables (`engine_metrics`, `router_metrics`); nothing here knows a
framework's names. See `suite.normalise.metrics`.
"""

from suite.normalise.metrics import (
    MetricsError,
    Series,
    Snapshot,
    delta,
    detect_framework,
    hist_quantile,
    normalise_text,
    parse_families,
)

__all__ = ["MetricsError", "Series", "Snapshot", "delta", "detect_framework", "hist_quantile", "normalise_text",
           "parse_families"]
