"""`pdsuite emulate`: run the stand-in engine (vLLM or SGLang flavour, one P/D role) on one port."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def emulate(
        flavor: str = typer.Option("vllm", help="Framework to emulate: vllm or sglang."),
        role: str = typer.Option("colocated", help="prefill, decode, colocated, or kvpool (the shared KV pool)."),
        host: str = typer.Option("127.0.0.1", help="Address to bind."),
        port: int = typer.Option(8000, min=1, max=65535, help="OpenAI API port."),
        model: str = typer.Option("meta-llama/Llama-3.1-8B-Instruct", help="Served model name."),
        model_config: str = typer.Option("llama-3.1-8b", help="Bundled config name or config.json path (sizing)."),
        hardware: str = typer.Option("h100", help="Hardware profile (h100, cpu-tiny) or a JSON profile file."),
        tp: int = typer.Option(1, min=1, max=8, help="Tensor-parallel size the cost model assumes."),
        kv_port: int = typer.Option(0, min=0, max=65535, help="vLLM: NIXL side-channel stand-in port (P and D)."),
        bootstrap_port: int = typer.Option(0, min=0, max=65535, help="SGLang: bootstrap server port (prefill)."),
        token_budget: int = typer.Option(8192, min=1, help="Tokens per engine step (chunked prefill budget)."),
        max_num_seqs: int = typer.Option(1024, min=1, help="Max requests in one batch."),
        max_model_len: int = typer.Option(131072, min=2, help="Max prompt + output tokens per request."),
        kv_timeout: float = typer.Option(60.0, min=0.1, help="Seconds a P/D hand-off may wait before failing."),
        spin_us: float = typer.Option(1500, min=0, help="Busy-wait this long before each step end (precision)."),
        kv_pool: str = typer.Option("", help="Shared KV pool URL (disagg-kvpool prefill): look prefixes up there."),
        kv_pool_block: int = typer.Option(256, min=1, help="Tokens per pool block (LMCache chunk / SGLang page)."),
        prefix_cache_block: int = typer.Option(0, min=0, help="GPU prefix cache in blocks of N tokens (vLLM's "
                                                "default: on, 16); 0 = off."),
        kv_pool_capacity_gb: float = typer.Option(8.0, min=0.001, help="--role kvpool: pool capacity in GB."),
        otlp_traces_endpoint: str = typer.Option("", help="vLLM flavour: export vLLM's request spans (OTLP/HTTP "
                                                  "protobuf) to this URL, e.g. http://127.0.0.1:4318/v1/traces."),
        tracing: str = typer.Option("on", help="on | off: whether --otlp-traces-endpoint is used (TRACING)."),
    ) -> None:
        """Run the EMULATED engine: OpenAI API, the framework's /metrics and P/D hand-off, cost-model timing."""
        import asyncio
        import logging

        from aiohttp import web

        from suite.deploy.model import Role
        from suite.emulator.costmodel import CostModel
        from suite.emulator.hardware import HardwareError, load_hardware
        from suite.emulator.server import EmulatorServer
        from suite.frameworks.base import get
        from suite.modelcfg import ModelConfigError, load

        def fail(msg: str) -> None:
            typer.echo(f"pdsuite: error: {msg}", err=True)
            raise typer.Exit(2)

        try:
            fw = get(flavor)
        except ValueError as e:
            fail(str(e))
        if not hasattr(fw, "emulator_metrics"):
            fail(f"framework {flavor!r} has no emulator tables")
        roles = (Role.PREFILL, Role.DECODE, Role.COLOCATED, Role.KVPOOL)
        if role not in {r.value for r in roles}:
            fail(f"unknown role {role!r}; known: {', '.join(r.value for r in roles)}")
        if tracing not in ("on", "off"):
            fail(f"--tracing must be on or off, got {tracing!r}")
        if otlp_traces_endpoint and not otlp_traces_endpoint.startswith(("http://", "https://")):
            fail(f"--otlp-traces-endpoint must be an http:// URL, got {otlp_traces_endpoint!r}")
        if kv_pool and not kv_pool.startswith(("http://", "https://")):
            fail(f"--kv-pool must be an http:// URL, got {kv_pool!r}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if role == Role.KVPOOL.value:
            from suite.emulator.kvpool import PoolServer

            logging.getLogger("pdsuite.emulator").warning(
                "pdsuite EMULATED shared KV pool (not a real LMCache server / Mooncake master): flavor=%s "
                "capacity=%.3g GB listening on %s:%d", flavor, kv_pool_capacity_gb, host, port)
            problem = _bind_problem(host, port)
            if problem:
                fail(problem)
            web.run_app(PoolServer(kv_pool_capacity_gb, fw.name, hardware).app(), host=host, port=port,
                        access_log=None, print=None, handle_signals=True)
            return
        try:
            cost = CostModel(load(model_config), load_hardware(hardware), tp=tp)
        except (ModelConfigError, HardwareError) as e:
            fail(str(e))
        if cost.kv_capacity_tokens() < 1:
            fail(f"model config {model_config!r} at tp={tp} does not fit hardware {hardware!r} (no room for KV)")
        problem = _bind_problem(host, port)  # after the inputs: their errors name the input, not the port
        if problem:
            fail(problem)
        # sglang-router probes workers with HTTP/2 (gRPC) first; aiohttp logs each probe as an error.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        srv = EmulatorServer(fw, Role(role), cost, host=host, port=port, model=model, hardware=hardware, tp=tp,
                             kv_port=kv_port or None, bootstrap_port=bootstrap_port or None,
                             token_budget=token_budget, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                             kv_timeout=kv_timeout, spin_s=spin_us * 1e-6, kv_pool=kv_pool or None,
                             kv_pool_block=kv_pool_block, prefix_cache_block=prefix_cache_block,
                             otlp_traces_endpoint=otlp_traces_endpoint if tracing == "on" else None)
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        web.run_app(srv.app(), host=host, port=port, access_log=None, print=None, handle_signals=True)


def _bind_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (checked before the engine starts), or None."""
    import ipaddress
    import socket

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return f"--host {host!r}: not an IP address"
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what the server itself sets
        try:
            s.bind((host, port))
        except OSError as e:
            return f"cannot listen on {host}:{port}: {e.strerror}"
    return None
