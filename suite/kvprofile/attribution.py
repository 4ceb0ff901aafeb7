"""Per-request attribution of P/D TTFT from connector and engine metrics (normalised units: seconds, bytes).

Input: histogram deltas (after - before one measured point) per role, in the normalised names of
suite/frameworks/*.py (kv_transfer_s, kv_transfer_bytes, queue_s, prefill_s, ...). Where the connector records the
transfer differs by framework (vLLM nixl_* on D, SGLang kv_transfer_* on P); the caller passes whichever role
has it. Output: achieved bandwidth, TTFT = queue + prefill on P + transfer + first decode step (+ unexplained
rest), and warnings with their remedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Below this the KV went over TCP (UCX fallback), not NVLink / CUDA IPC (~370 GB/s) or RDMA (>= 10 GB/s).
TCP_FALLBACK_BPS = 5e9
TCP_REMEDY = ("run P and D with network_mode: host, ipc: host and pid: host, make both GPUs visible to both "
              "containers (pin each engine with CUDA_VISIBLE_DEVICES / its GPU ordinal), set UCX_TLS=all (or include "
              "cuda_ipc), set UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y where P and D have no NVLink between them (one GPU, "
              "PCIe: UCX turns cuda_ipc reads off there, and NIXL reads), and do not pass "
              "--enable-sleep-mode (it disables cuda_ipc); then check `pdsuite doctor`")


@dataclass(frozen=True)
class HistDelta:
    """A histogram's (or summary's) count and sum over one measured point."""

    count: float
    sum: float

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


@dataclass(frozen=True)
class RoleDeltas:
    """Normalised metric deltas of one engine role (prefill or decode) over one point; absent = not exposed."""

    role: str
    hist: dict[str, HistDelta] = field(default_factory=dict)  # e.g. {"kv_transfer_s": HistDelta(...)}
    counters: dict[str, float] = field(default_factory=dict)  # e.g. {"requests_completed": 120}

    def mean(self, name: str) -> float | None:
        h = self.hist.get(name)
        return h.mean if h else None


@dataclass(frozen=True)
class Attribution:
    requests: float | None
    transfer_s: float | None  # per request
    transfer_bytes: float | None  # per request
    achieved_bps: float | None  # bytes / summed transfer time: per transfer, waits behind other transfers included
    point_bps: float | None  # bytes / the point's window: what the link carried while transfers overlapped
    components_s: dict[str, float | None]  # queue_p, prefill_p, transfer, first_decode, other
    ttft_s: float | None
    shares: dict[str, float]  # component / TTFT
    warnings: list[str]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _per_request(h: HistDelta | None, requests: float | None) -> float | None:
    """Per-request value: sum / requests when several observations make up one request (per-layer or per-TP-rank
    transfers, pooled NIXL metrics), else the histogram mean."""
    if h is None or h.count <= 0:
        return None
    return h.sum / requests if requests else h.mean


def attribute(prefill: RoleDeltas, decode: RoleDeltas, *, ttft_s: float | None = None, requests: float | None = None,
              expected_bps: float | None = None, kv_bytes_per_token: int | None = None,
              prompt_tokens: float | None = None, span_phases: dict[str, float] | None = None,
              window_s: float | None = None) -> Attribution:
    """TTFT(P/D) = queue on P + prefill on P + KV transfer + first decode step, per request (means).

    ttft_s: the client-side mean TTFT (preferred; engine TTFTs miss the router). requests: P/D requests in the
    point (default: the transfer histogram's count). expected_bps: the link bandwidth measured by kvprobe.
    kv_bytes_per_token + prompt_tokens (per request): checks the bytes moved against the KV size model.
    span_phases: mean per-request phases from the engines' own spans (suite/analysis/breakdown.py); where given,
    queue and prefill on P and D's first step come from them instead of the histograms.
    window_s: the point's measured window (first send to last response, summed over repetitions): under load
    transfers queue behind each other, so per-transfer bandwidth understates the link; bytes / window does not.
    """
    warnings: list[str] = []
    side = next((r for r in (decode, prefill) if "kv_transfer_s" in r.hist), None)
    xfer_t = side.hist["kv_transfer_s"] if side else None
    xfer_b = (side.hist.get("kv_transfer_bytes") if side else None) or decode.hist.get(
        "kv_transfer_bytes") or prefill.hist.get("kv_transfer_bytes")
    if requests is None:
        requests = prefill.counters.get("requests_completed") or (xfer_t.count if xfer_t else None)
    transfer = _per_request(xfer_t, requests)
    nbytes = _per_request(xfer_b, requests)
    bps = xfer_b.sum / xfer_t.sum if xfer_t and xfer_b and xfer_t.sum > 0 else None
    if xfer_t is None:
        warnings.append("no KV-transfer metrics in this point: is the connector's metrics export on, and did any "
                        "P/D request run?")
    point_bps = xfer_b.sum / window_s if xfer_b and window_s else None
    if bps is not None and bps < TCP_FALLBACK_BPS and (point_bps is None or point_bps < TCP_FALLBACK_BPS):
        over = ("" if point_bps is None or point_bps <= 1.5 * bps else
                f" per transfer ({point_bps / 1e9:.2f} GB/s over the point: transfers queued behind each other)")
        warnings.append(f"KV transfer achieved {bps / 1e9:.2f} GB/s{over}: that is a TCP fallback, not NVLink/CUDA "
                        f"IPC. Remedy: {TCP_REMEDY}.")
    elif bps is not None and expected_bps and bps < 0.25 * expected_bps:
        warnings.append(f"KV transfer achieved {bps / 1e9:.1f} GB/s, under a quarter of the {expected_bps / 1e9:.0f}"
                        " GB/s kvprobe measured on this link: per-descriptor overheads or a slower path dominate")
    if nbytes and kv_bytes_per_token and prompt_tokens:
        expect = kv_bytes_per_token * prompt_tokens
        if not 0.5 <= nbytes / expect <= 2.0:
            warnings.append(f"moved {nbytes / 1e6:.1f} MB per request but the KV size model expects "
                            f"{expect / 1e6:.1f} MB ({prompt_tokens:.0f} tokens x {kv_bytes_per_token} B): check "
                            "the KV dtype, prefix-cache hits on D, or metrics pooled across TP ranks")

    comps: dict[str, float | None] = {
        "queue_p": prefill.mean("queue_s"),
        "prefill_p": prefill.mean("prefill_s"),
        "transfer": transfer,
        # first decode step: D's first-token time is not exported apart from its queue; one ITL is the estimate
        "first_decode": decode.mean("first_decode_s") or decode.mean("itl_s"),
    }
    if span_phases:  # per-request engine data beats histogram means (same requests as the client's)
        comps |= {k: span_phases[p] for k, p in (("queue_p", "prefill_queue"), ("prefill_p", "prefill_compute"),
                                                  ("first_decode", "decode_first")) if p in span_phases}
    known = sum(v for v in comps.values() if v is not None)
    comps["other"] = ttft_s - known if ttft_s is not None else None
    shares = {k: v / ttft_s for k, v in comps.items() if v is not None and ttft_s}
    if comps["other"] is not None and ttft_s and comps["other"] < -0.1 * ttft_s:
        warnings.append("the components add up to more than the measured TTFT: the engines' histograms and the "
                        "client's requests probably cover different requests (warm-up or retries in the window)")
    return Attribution(requests=requests, transfer_s=transfer, transfer_bytes=nbytes, achieved_bps=bps,
                       point_bps=point_bps,
                       components_s=comps, ttft_s=ttft_s, shares=shares, warnings=warnings)
