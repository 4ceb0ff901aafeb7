"""Helpers shared by the Docker e2e tests (imported by conftest and the test modules)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from suite.netutil import free_ports  # noqa: F401  (used by the e2e tests)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRE = os.environ.get("PDSUITE_REQUIRE_DOCKER") == "1"


def unavailable(why: str):
    """Skip, or fail when CI requires Docker (a skipped proof must never look like a pass there)."""
    if REQUIRE:
        pytest.fail(f"PDSUITE_REQUIRE_DOCKER=1 but {why}")
    pytest.skip(why)


def clean_env(**overrides: str) -> dict[str, str]:
    """The process env minus every pdsuite setting (a developer's shell must not change what we test)."""
    from suite.config import Settings

    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields and k != "COMPOSE_PROFILES"}
    return env | overrides


