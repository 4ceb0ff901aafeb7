"""The committed docker-compose.yml and .env.example are exactly what the generator writes."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

import suite.cli
from suite.config import env_example
from suite.deploy.compose import render


def test_committed_files_match_generator():
    result = CliRunner().invoke(suite.cli.app, ["gen", "--check"])
    assert result.exit_code == 0, result.output


def test_gen_check_catches_a_hand_edit(tmp_path, monkeypatch):
    (tmp_path / "docker-compose.yml").write_text(render().replace("retries: 3", "retries: 30", 1))
    (tmp_path / ".env.example").write_text(env_example())
    monkeypatch.setattr(suite.cli, "ROOT", tmp_path)
    result = CliRunner().invoke(suite.cli.app, ["gen", "--check"])
    assert result.exit_code == 1
    assert "docker-compose.yml" in result.output and ".env.example" not in result.output


def test_gen_writes_what_check_accepts(tmp_path, monkeypatch):
    monkeypatch.setattr(suite.cli, "ROOT", tmp_path)
    assert CliRunner().invoke(suite.cli.app, ["gen"]).exit_code == 0
    assert CliRunner().invoke(suite.cli.app, ["gen", "--check"]).exit_code == 0
    assert yaml.safe_load((tmp_path / "docker-compose.yml").read_text())["name"] == "pdsuite"
