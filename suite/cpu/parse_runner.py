"""Runs INSIDE an engine venv (stdlib only): checks many command lines with one import of the engine.

stdin: {"source": <framework's parser_source, defining check(argv) and VERSION>, "cases": [{"id", "argv"}]}
argv[1]: where to write {"version", "results": [{"id", "ok", "parsed" | "error"}]} - not stdout, which engines
log to. A line fails if check() raises or exits (argparse exits 2 and prints "prog: error: ..." on stderr).
"""

import contextlib
import io
import json
import sys


def _error_text(stderr: str) -> str:
    """The argparse message (from its 'error:' line on), without the long usage block before it."""
    lines = stderr.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if "error:" in lines[i]:
            return "\n".join(lines[i:])[:2000]
    return "\n".join(lines[-5:])[:2000]


def main() -> None:
    job = json.load(sys.stdin)
    ns: dict = {}
    exec(compile(job["source"], "<parser_source>", "exec"), ns)
    results = []
    for case in job["cases"]:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parsed = ns["check"](list(case["argv"]))
            results.append({"id": case["id"], "ok": True, "parsed": parsed})
        except SystemExit as e:
            results.append({"id": case["id"], "ok": False,
                            "error": _error_text(err.getvalue()) or f"SystemExit({e.code})"})
        except Exception as e:  # validation errors: ValueError, pydantic ValidationError, ...
            results.append({"id": case["id"], "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]})
    with open(sys.argv[1], "w") as f:
        json.dump({"version": ns.get("VERSION"), "results": results}, f, default=str)


if __name__ == "__main__":
    main()
