"""pdsuite's additions to Locust's web UI (master or local runner).

Locust's own statistics (its table, RPS and response-time charts) hold one entry per request; the latencies per
class live in the master's `latency` statistics (suite.load.locust_glue), which this module shows:
- tab "pdsuite" (Locust's extended-tab mechanism): per class x TTFT/ITL/TPOT/E2E (+ send lag): count, p50/p90/p99,
  max (ms), an EMULATED row when the endpoint says so;
- /pdsuite/charts: per-class percentile charts over time (Locust's own Charts tab only draws the aggregate),
  sampled every 2 s on the master (/pdsuite/history), with a clock-time axis and the rate/mix controls;
- a bar at the top of every Locust page, in the page's flow (it pushes the page down rather than covering any of
  it): a red EMULATED marker when the endpoint is emulated, live rate and mix fields (-> /pdsuite/rate,
  /pdsuite/mix), a link to the charts.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque

import gevent

METRICS = ("TTFT", "ITL", "TPOT", "E2E")
TABLE_METRICS = (*METRICS, "SEND_LAG")
PCTS = (0.5, 0.9, 0.99)
HISTORY: deque = deque(maxlen=3600)
_BODY = re.compile(rb"<body[^>]*>")  # the bar goes first in the body, before Locust's app
log = logging.getLogger("pdsuite.load")  # 2 h at one sample per 2 s


def class_rows(stats, emulated: bool) -> list[dict]:
    rows = []
    if emulated:
        rows.append({"name": "EMULATED", "metric": "endpoint says x-pdsuite-emulated: true - not a real engine"})
    for e in sorted(stats.entries.values(), key=lambda e: (e.method == "SEND_LAG", e.name,
                                                          TABLE_METRICS.index(e.method)
                                                          if e.method in TABLE_METRICS else 9)):
        if e.method not in TABLE_METRICS or not e.num_requests:
            continue
        row = {"name": e.name, "metric": e.method, "count": e.num_requests, "failures": e.num_failures,
               "max_ms": round(e.max_response_time, 2)}
        for p in PCTS:
            row[f"p{int(p * 100)}_ms"] = round(e.get_response_time_percentile(p), 2)
        rows.append(row)
    return rows


def _current(e, p: float) -> float | None:
    try:
        return e.get_current_response_time_percentile(p)  # Locust's ~10 s window
    except ValueError:  # no window cache on this runner: cumulative
        return e.get_response_time_percentile(p)


def _sampler(master) -> None:
    while True:
        gevent.sleep(2.0)
        stats = master.latency
        if not stats.entries:
            continue
        point = {"t": time.time()}
        try:
            for e in list(stats.entries.values()):
                if e.method in METRICS and e.num_requests:
                    point[f"{e.method} {e.name}"] = [_current(e, p) for p in (0.5, 0.99)]
        except Exception as exc:  # a chart sample must never take the sampler down
            log.warning("pdsuite charts: sample failed: %s", exc)
            continue
        HISTORY.append(point)


TABLE = [{"key": k, "title": t} for k, t in (
    ("name", "Class"), ("metric", "Metric"), ("count", "# entries"), ("failures", "# failed"),
    ("p50_ms", "p50 (ms)"), ("p90_ms", "p90 (ms)"), ("p99_ms", "p99 (ms)"), ("max_ms", "Max (ms)"))]

BAR = """<div id="pdsuite-bar" style="position:static;background:#fff;color:#111;border-bottom:2px solid #444;
padding:4px 10px;font:14px sans-serif">
<b id="pd-emu" style="display:none;background:#c00;color:#fff;padding:2px 8px;border-radius:4px;margin-right:8px">
EMULATED</b>pdsuite rate <input id="pd-rate" size="4"> req/s &nbsp;mix <input id="pd-mix" size="36"
placeholder="long_prefill=1,short_decode=3"> <button id="pd-apply">Apply</button>
<a href="/pdsuite/charts" target="_blank">per-class charts</a> <span id="pd-msg"></span></div>
<script>(function(){
const $=id=>document.getElementById(id);
async function poll(){try{const s=await (await fetch('/pdsuite')).json();
$('pd-emu').style.display=s.emulated?'inline':'none';
if(document.activeElement!==$('pd-rate')&&s.rate_rps)$('pd-rate').value=s.rate_rps;
if(document.activeElement!==$('pd-mix')&&s.mix)$('pd-mix').value=Object.entries(s.mix).map(([k,v])=>k+'='+(+v).toFixed(3)).join(',');
}catch(e){}}
$('pd-apply').onclick=async()=>{let r=await fetch('/pdsuite/rate?rps='+encodeURIComponent($('pd-rate').value));
if(r.ok&&$('pd-mix').value){r=await fetch('/pdsuite/mix?'+$('pd-mix').value.split(',').map(x=>x.trim()).join('&'));}
const j=await r.json();$('pd-msg').textContent=r.ok?'applied':j.error;poll();};
setInterval(poll,2000);poll();})();</script>"""

CHARTS = """<!doctype html><html><head><meta charset="utf-8"><title>pdsuite per-class percentiles</title>
<style>body{font:14px sans-serif;margin:16px}canvas{border:1px solid #ccc;margin:6px}#emu{display:none;
background:#c00;color:#fff;padding:4px 10px;font-weight:bold}</style></head><body>
<h2>pdsuite: per-class percentiles (p50 solid, p99 dashed; ms; ~10 s window)</h2>
__BAR__
<div id="emu">EMULATED endpoint: these numbers are not a real engine's</div><div id="charts"></div>
<script>
const M=['TTFT','ITL','TPOT','E2E'],C=['#1f77b4','#d62728','#2ca02c','#9467bd','#ff7f0e','#8c564b'];
const box=document.getElementById('charts');const cv={};
for(const m of M){const c=document.createElement('canvas');c.width=620;c.height=260;c.id='chart-'+m;
 box.appendChild(c);cv[m]=c;}
function draw(h){for(const m of M){const c=cv[m],g=c.getContext('2d');g.clearRect(0,0,c.width,c.height);
 const keys=[...new Set(h.flatMap(p=>Object.keys(p).filter(k=>k.startsWith(m+' '))))];
 let ymax=1;h.forEach(p=>keys.forEach(k=>{if(p[k])ymax=Math.max(ymax,...p[k].map(v=>v||0))}));
 const t0=h.length?h[0].t:0,t1=h.length?h[h.length-1].t:1,X=t=>50+(c.width-60)*(t-t0)/Math.max(1,t1-t0),
 Y=v=>c.height-30-(c.height-60)*v/ymax;g.fillStyle='#000';g.fillText(m+' (ms), max '+ymax.toFixed(1),50,14);
 [0,.5,1].forEach(f=>g.fillText((ymax*f).toFixed(0),8,Y(ymax*f)+4));
 [0,.25,.5,.75,1].forEach(f=>{const t=t0+f*(t1-t0);if(!h.length)return;const x=X(t);
  g.fillText(new Date(t*1000).toLocaleTimeString([],{hour12:false}),Math.min(x-22,c.width-58),c.height-12);
  g.beginPath();g.moveTo(x,Y(0));g.lineTo(x,Y(0)+4);g.stroke();});
 g.strokeStyle='#999';g.beginPath();g.moveTo(50,Y(0));g.lineTo(c.width-10,Y(0));g.moveTo(50,Y(0));g.lineTo(50,20);g.stroke();
 keys.forEach((k,i)=>{[0,1].forEach(j=>{g.strokeStyle=C[i%C.length];g.setLineDash(j?[5,4]:[]);g.beginPath();
  let first=true;h.forEach(p=>{if(!p[k]||p[k][j]==null)return;const x=X(p.t),y=Y(p[k][j]);
  first?g.moveTo(x,y):g.lineTo(x,y);first=false});
  g.stroke();});g.setLineDash([]);g.fillStyle=C[i%C.length];g.fillText(k.slice(m.length+1),c.width-160,30+14*i);});}}
async function tick(){try{const r=await (await fetch('/pdsuite/history')).json();draw(r.history);
document.getElementById('emu').style.display=r.emulated?'block':'none';}catch(e){}}
setInterval(tick,2000);tick();
</script></body></html>"""


def extend(environment, master) -> None:
    """Register the tab, routes and bar on the master's (or local runner's) web UI."""
    from flask import Response, jsonify, request

    web = environment.web_ui
    app = web.app
    web.template_args["extended_tabs"] = [{"title": "pdsuite per class", "key": "pdsuite"}]
    web.template_args["extended_tables"] = [{"key": "pdsuite", "structure": TABLE}]
    gevent.spawn(_sampler, master)

    @app.after_request
    def _extend(response):
        if request.path == "/stats/requests" and response.is_json:
            data = response.get_json()
            rows = class_rows(master.latency, master.emulated)
            data["extended_stats"] = [{"key": "pdsuite", "data": rows}]
            response.set_data(json.dumps(data))
        elif request.path == "/" and response.mimetype == "text/html":
            response.direct_passthrough = False
            response.set_data(_BODY.sub(lambda m: m.group(0) + BAR.encode(), response.get_data(), count=1))
        return response

    @app.route("/pdsuite/history")
    def pd_history():
        return jsonify({"emulated": master.emulated, "history": list(HISTORY)})

    @app.route("/pdsuite/charts")
    def pd_charts():
        return Response(CHARTS.replace("__BAR__", BAR), mimetype="text/html")
