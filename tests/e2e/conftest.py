"""Docker e2e fixtures: the compose CLI, the Docker engine, the images.

Without Docker these tests skip, unless PDSUITE_REQUIRE_DOCKER=1 (set by `make test` / CI): then a missing engine
or image is a failure, so CI can never pass green without having proven the stack.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from dockerutil import COMPOSE_FILE, ROOT, clean_env, unavailable


@pytest.fixture(scope="session")
def compose(tmp_path_factory):
    """Run `docker compose` on the repo's compose file with an empty env file (ignores a developer's .env)."""
    if not shutil.which("docker"):
        unavailable("docker CLI not installed (scripts/setup-docker.sh)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode:
        unavailable("docker compose v2 plugin not installed (scripts/setup-docker.sh)")
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60, check: bool = True):
        cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or clean_env(), cwd=ROOT)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        return r

    return run


@pytest.fixture(scope="session")
def docker_daemon():
    if not shutil.which("docker"):
        unavailable("docker CLI not installed (scripts/setup-docker.sh)")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode:
        unavailable("no Docker engine running (scripts/setup-docker.sh starts one)")


@pytest.fixture(scope="session")
def images(docker_daemon):
    from suite.config import Settings

    s = Settings()
    for tag in (s.SUITE_IMAGE, s.ROUTER_IMAGE):
        if subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=60).returncode:
            unavailable(f"image {tag} missing (make images)")
    return s
