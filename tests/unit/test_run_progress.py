"""`pdsuite run` with stdout not a terminal (CI logs, `make demo | tee`): one progress line per step."""

from typer.testing import CliRunner

import suite.cli
import suite.runner.run
from suite.runner.run import RunState


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    def fake_run_plan(plan, settings, out_root, *, progress, **kw):
        progress("emu-vllm-colocated: starting", 0, 8)
        progress("emu-vllm-colocated: rate=2 rep0", 0, 8)
        progress("emu-vllm-colocated: rate=2 rep1", 1, 8)
        return RunState(out=tmp_path / "r", done=8)

    monkeypatch.setattr(suite.runner.run, "run_plan", fake_run_plan)
    (tmp_path / "empty.env").write_text("")
    res = CliRunner().invoke(suite.cli.app, ["run", "demo", "--backend", "emu", "--driver", "process",
                                             "--env-file", str(tmp_path / "empty.env"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("[")]
    assert len(lines) == 3 and lines[-1].startswith("[1/8 points, ")
    assert lines[-1].endswith("demo | emu-vllm-colocated: rate=2 rep1")
