"""The emulator's HTTP layer in-process (aiohttp test server on loopback): OpenAI shapes, token counts,
"emulated" labelling, errors, and both P/D hand-offs between two in-process engines."""

import asyncio
import itertools

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from suite.emulator.costmodel import CostModel
from suite.emulator.hardware import PROFILES
from suite.emulator.protocol import ApiError, parse_request
from suite.emulator.server import EmulatorServer
from suite.frameworks.base import Role, get
from suite.modelcfg import load
from suite.netutil import free_port

COST = CostModel(load("tiny-llama"), PROFILES["cpu-tiny"])


def make(flavor="vllm", role=Role.COLOCATED, **kw) -> EmulatorServer:
    return EmulatorServer(get(flavor), role, COST, host="127.0.0.1", port=0, model="tiny", hardware="cpu-tiny",
                          kv_timeout=2.0, **kw)


async def sse(resp) -> list[dict]:
    out = []
    async for line in resp.content:
        line = line.strip()
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# ---- request parsing (the emulated tokenizer rule) ------------------------------------------------
def test_token_counting_rules():
    assert parse_request({"prompt": [5, 6, 7]}, False, "m", 100).prompt_tokens == 3
    assert parse_request({"prompt": "a  b\nc"}, False, "m", 100).prompt_tokens == 3
    assert parse_request({"prompt": [[1, 2]]}, False, "m", 100).prompt_tokens == 2
    chat = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
            "max_completion_tokens": 7}
    p = parse_request(chat, True, "m", 100)
    assert (p.prompt_tokens, p.max_tokens) == (5, 7)


@pytest.mark.parametrize("body,status", [({"prompt": []}, 400), ({"prompt": [1, "x"]}, 400),
                                         ({"prompt": "a", "max_tokens": 0}, 400),
                                         ({"prompt": "a", "max_tokens": 200}, 400),
                                         ({"prompt": "a", "model": "other"}, 404)])
def test_bad_requests(body, status):
    with pytest.raises(ApiError) as e:
        parse_request(body, False, "m", 100)
    assert e.value.status == status


# ---- one engine -----------------------------------------------------------------------------------
def test_streaming_completion_exact_tokens_usage_and_labels():
    async def go():
        srv = make()
        async with TestServer(srv.app()) as ts, ClientSession() as s:
            body = {"model": "tiny", "prompt": list(range(37)), "max_tokens": 9, "stream": True,
                    "stream_options": {"include_usage": True}}
            async with s.post(ts.make_url("/v1/completions"), json=body) as r:
                assert r.status == 200 and r.headers["x-pdsuite-emulated"] == "true"
                events = await sse(r)
            tokens = [e for e in events if e["choices"]]
            assert len(tokens) == 9 and all(len(e["choices"][0]["text"].split()) == 1 for e in tokens)
            assert tokens[-1]["choices"][0]["finish_reason"] == "length"
            assert events[-1]["usage"] == {"prompt_tokens": 37, "completion_tokens": 9, "total_tokens": 46}
            async with s.get(ts.make_url("/v1/models")) as r:
                assert (await r.json())["data"][0]["owned_by"] == "pdsuite-emulator"
            async with s.get(ts.make_url("/metrics")) as r:
                text = await r.text()
            assert 'vllm:generation_tokens_total{engine="0",model_name="tiny"} 9.0' in text
            assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 1.0' in text
            assert "pdsuite_emulated_info{" in text
    run(go())


def test_chat_non_streaming_and_errors_in_each_flavor_shape():
    async def go():
        for flavor, shape in (("vllm", "error"), ("sglang", "object")):
            async with TestServer(make(flavor).app()) as ts, ClientSession() as s:
                body = {"model": "tiny", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}
                async with s.post(ts.make_url("/v1/chat/completions"), json=body) as r:
                    out = await r.json()
                assert out["choices"][0]["message"]["content"] == " w0 w1 w2 w3"
                assert out["usage"]["prompt_tokens"] == 2
                async with s.post(ts.make_url("/v1/completions"), data=b"{nope") as r:
                    assert r.status == 400 and shape in await r.json()
    run(go())


def test_colocated_long_prompt_delays_a_running_stream():
    """Live timing: a 4096-token prompt arriving mid-stream adds a ~146 ms step to the stream's ITL."""
    async def go():
        srv = make()
        async with TestServer(srv.app()) as ts, ClientSession() as s:
            body = {"model": "tiny", "prompt": [1] * 10, "max_tokens": 60, "stream": True}
            stamps = []

            async def stream():
                async with s.post(ts.make_url("/v1/completions"), json=body) as r:
                    async for line in r.content:
                        if line.startswith(b"data: {"):
                            stamps.append(asyncio.get_running_loop().time())
            t = asyncio.create_task(stream())
            await asyncio.sleep(0.03)
            async with s.post(ts.make_url("/v1/completions"), json={"prompt": [1] * 4096, "max_tokens": 1}) as r:
                assert r.status == 200
            await t
            gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
            assert gaps[-1] > 0.1 > gaps[len(gaps) // 2]
    run(go())


# ---- P/D ------------------------------------------------------------------------------------------
def test_vllm_nixl_pull_between_two_engines():
    async def go():
        p = make("vllm", Role.PREFILL, kv_port=free_port())
        d = make("vllm", Role.DECODE, kv_port=free_port())
        async with TestServer(p.app()) as tp, TestServer(d.app()) as td, ClientSession() as s:
            body = {"model": "tiny", "prompt": list(range(300)), "max_tokens": 1, "stream": False,
                    "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}
            async with s.post(tp.make_url("/v1/completions"), json=body) as r:
                kvp = (await r.json())["kv_transfer_params"]
            assert kvp["remote_port"] == p.kv_port and len(kvp["remote_block_ids"]) == 19  # ceil(300/16)
            body |= {"max_tokens": 5, "stream": True, "kv_transfer_params": kvp}
            async with s.post(td.make_url("/v1/completions"), json=body) as r:
                assert len([e for e in await sse(r) if e["choices"]]) == 5
            # the blocks were claimed: a second pull of the same blocks fails fast with 400
            async with s.post(td.make_url("/v1/completions"), json=body) as r:
                assert r.status == 400 and "failed" in (await r.json())["error"]["message"]
            async with s.get(td.make_url("/metrics")) as r:
                text = await r.text()
            assert 'source="external_kv_transfer"} 299.0' in text
            assert f"vllm:nixl_bytes_transferred_sum{{engine=\"0\",model_name=\"tiny\"}} {COST.transfer_bytes(300)}" \
                in text
            assert 'vllm:nixl_num_failed_transfers_total{engine="0",model_name="tiny"} 1.0' in text
    run(go())


def test_sglang_bootstrap_room_between_two_engines():
    async def go():
        p = make("sglang", Role.PREFILL, bootstrap_port=free_port())
        d = make("sglang", Role.DECODE)
        async with TestServer(p.app()) as tp, TestServer(d.app()) as td, ClientSession() as s:
            body = {"model": "tiny", "prompt": "x " * 200, "max_tokens": 4, "stream": True,
                    "bootstrap_host": "127.0.0.1", "bootstrap_port": p.bootstrap_port, "bootstrap_room": 42}
            rp, rd = await asyncio.gather(s.post(tp.make_url("/v1/completions"), json=body),
                                          s.post(td.make_url("/v1/completions"), json=body))
            assert rp.status == 200 and rd.status == 200
            assert len([e for e in await sse(rd) if e["choices"]]) == 4
            rp.release()
            async with s.get(tp.make_url("/metrics")) as r:
                text = await r.text()
            assert 'sglang:kv_transfer_latency_ms_count{engine_type="prefill"' in text
            line = next(x for x in text.splitlines() if x.startswith("sglang:kv_transfer_total_mb_sum"))
            assert float(line.split()[-1]) == pytest.approx(COST.transfer_bytes(200) / 1e6)
            # a decode request whose room never reaches P fails with 4xx after --kv-timeout, not a hang
            body["bootstrap_room"] = 7
            async with s.post(td.make_url("/v1/completions"), json=body, timeout=ClientTimeout(total=10)) as r:
                assert r.status == 400
    run(go())


def test_cli_rejects_unknown_flavor_role_and_config():
    from suite.cli import app

    for args, msg in ((["--flavor", "tgi"], "unknown framework"), (["--role", "both"], "unknown role"),
                      (["--model-config", "nope"], "no model config"), (["--hardware", "tpu"], "hardware")):
        r = CliRunner().invoke(app, ["emulate", *args])
        assert r.exit_code == 2 and msg in r.output, r.output


def test_vllm_prefix_cache_serves_a_repeated_prompt_head():
    async def go():
        srv = make(prefix_cache_block=16)
        async with TestServer(srv.app()) as ts, ClientSession() as s:
            for prompt in (list(range(100)), list(range(64)) + [7] * 36, list(range(100))):
                body = {"model": "tiny", "prompt": prompt, "max_tokens": 2}
                async with s.post(ts.make_url("/v1/completions"), json=body) as r:
                    assert r.status == 200
            async with s.get(ts.make_url("/metrics")) as r:
                text = await r.text()
        # 1st: nothing cached; 2nd: its 64 shared tokens (4 blocks); 3rd: 96 of 100 (6 full blocks within 99)
        assert 'vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 160.0' in text
        assert 'vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_cache_hit"} 160.0' \
            in text
        assert 'vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_compute"} 140.0' in text
    run(go())
