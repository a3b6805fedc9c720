"""The memory API's dashboard (``GET <prefix>/``): one self-contained HTML page.

Inline CSS and vanilla JS, no external asset of any kind. The page polls ``<prefix>/stats``
every 2 s and draws, from the governor's bounded ring of samples (``history``), memory pressure
over time as an inline SVG chart with a line where each status band starts (the configured
thresholds, as ``stats`` gives them), next to the current status band, the cache and GC
figures and the governor's last actions. On 401/403 it shows the API's message and asks for
the token, keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer``
with every poll: never in a cookie or the URL.

The page is served with a strict Content-Security-Policy (:func:`dashboard_csp`): nothing but
its own inline script and style, each allowed by its hash, and requests to its own origin.

Everything taken from the JSON goes into the DOM through ``textContent`` or ``setAttribute``,
never ``innerHTML``; the prefix is embedded HTML-escaped in the markup and as a JSON string with
``<``, ``>`` and ``&`` escaped in the script.

    body = dashboard_html("/api/v1/memory").encode()   # text/html; charset=utf-8
    policy = dashboard_csp("/api/v1/memory")           # its Content-Security-Policy
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import re

__all__ = ["dashboard_csp", "dashboard_html"]

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Memory dashboard \u2013 __PREFIX_HTML__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d232b}
header{display:flex;gap:1em;align-items:center;padding:.8em 1.2em;background:#1d232b;color:#fff}
header h1{font-size:1.1em;margin:0;font-weight:600}
header code{color:#aab4c0}
#last-updated{margin-left:auto;color:#aab4c0;font-size:.9em}
main{display:grid;grid-template-columns:2fr 1fr;gap:1em;padding:1em 1.2em;max-width:1300px}
section{background:#fff;border-radius:6px;padding:.8em 1em;box-shadow:0 1px 2px #0002}
h2{font-size:.95em;margin:0 0 .6em;text-transform:uppercase;letter-spacing:.04em;color:#556}
h2.next{margin-top:1em}
.wide{grid-column:1/-1}
dl{display:grid;grid-template-columns:auto 1fr;gap:.2em 1em;margin:0}
dt{color:#667}dd{margin:0;font-variant-numeric:tabular-nums;text-align:right}
#status{display:inline-block;padding:.15em .7em;border-radius:1em;font-weight:600;
background:#889;color:#fff}
#status[data-status=excellent]{background:#1f8a4c}#status[data-status=good]{background:#5a9e1b}
#status[data-status=warning]{background:#d08a00}#status[data-status=critical]{background:#c62828}
#chart{width:100%;height:auto;display:block}
#chart .band{stroke-dasharray:4 4;stroke-width:1}
#chart text{font-size:11px;fill:#667}
#chart polyline{fill:none;stroke:#2563eb;stroke-width:2;stroke-linejoin:round}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #e3e6ea}
td.num,th.num{text-align:right}
#error{color:#c62828;min-height:1.2em;margin:0}
#token-form{display:flex;gap:.5em;align-items:center}
#token-form[hidden],section[hidden]{display:none}
</style>
</head>
<body>
<header><h1>Memory dashboard</h1><code>__PREFIX_HTML__</code>
<span id="status" data-status="">\u2013</span>
<span id="last-updated" data-refreshes="0">not yet loaded</span></header>
<main>
<section class="wide" id="auth" hidden>
<p id="error" role="alert"></p>
<form id="token-form" hidden>
<label for="token">API token</label>
<input id="token" type="password" autocomplete="off" size="40">
<button type="submit">Use token</button>
</form>
</section>
<section>
<h2>Memory pressure (% of limit)</h2>
<svg id="chart" viewBox="0 0 640 240" role="img" aria-label="memory percent over time">
<rect x="40" y="10" width="590" height="200" fill="#fafbfc" stroke="#e3e6ea"/>
<line id="band-good" class="band" x1="40" x2="630" y1="100" y2="100" stroke="#5a9e1b"/>
<line id="band-warning" class="band" x1="40" x2="630" y1="80" y2="80" stroke="#d08a00"/>
<line id="band-critical" class="band" x1="40" x2="630" y1="40" y2="40" stroke="#c62828"/>
<text id="label-good" x="34" y="104" text-anchor="end">55</text>
<text id="label-warning" x="34" y="84" text-anchor="end">65</text>
<text id="label-critical" x="34" y="44" text-anchor="end">85</text>
<text x="34" y="14" text-anchor="end">100</text>
<text x="34" y="214" text-anchor="end">0</text>
<polyline id="line" points="" data-points="0"/>
<text id="chart-span" x="630" y="230" text-anchor="end"></text>
</svg>
</section>
<section>
<h2>Memory</h2>
<dl>
<dt>used</dt><dd id="mem-percent">\u2013</dd>
<dt>RSS</dt><dd id="mem-rss">\u2013</dd>
<dt>used / limit</dt><dd id="mem-used">\u2013</dd>
<dt>source</dt><dd id="mem-source">\u2013</dd>
</dl>
<h2 class="next">Cache</h2>
<dl>
<dt>items</dt><dd id="cache-items">\u2013</dd>
<dt>size</dt><dd id="cache-size">\u2013</dd>
<dt>hit rate</dt><dd id="cache-hit-rate">\u2013</dd>
<dt>evictions</dt><dd id="cache-evictions">\u2013</dd>
</dl>
</section>
<section>
<h2>Garbage collector</h2>
<dl>
<dt>mode</dt><dd id="gc-mode">\u2013</dd>
<dt>counts</dt><dd id="gc-counts">\u2013</dd>
<dt>collections / gen</dt><dd id="gc-collections">\u2013</dd>
<dt>frozen objects</dt><dd id="gc-frozen">\u2013</dd>
</dl>
</section>
<section>
<h2>Last actions</h2>
<table><thead><tr><th>kind</th><th>reason</th><th class="num">MB freed</th>
<th class="num">ms</th></tr></thead><tbody id="actions"></tbody></table>
</section>
</main>
<script>
"use strict";
const PREFIX = __PREFIX_JSON__;
const KEY = "wsgi_memopt.token";
const $ = (id) => document.getElementById(id);
let token = "";
try { token = sessionStorage.getItem(KEY) || ""; } catch (e) { /* storage disabled */ }
let timer = 0;
let refreshes = 0;

function show(id, value) { $(id).textContent = value == null ? "\u2013" : String(value); }
function problem(message) {
  show("error", message);
  $("auth").hidden = !message && $("token-form").hidden;
}
function unit(value, digits, suffix) {
  return typeof value === "number" ? value.toFixed(digits) + suffix : null;
}

function chartY(percent) {
  return (210 - Math.min(Math.max(percent, 0), 100) * 2).toFixed(1);
}

function drawBands(bands) {
  for (const band of ["good", "warning", "critical"]) {
    const at = bands && bands[band];
    if (typeof at !== "number") continue;
    const y = chartY(at);
    $("band-" + band).setAttribute("y1", y);
    $("band-" + band).setAttribute("y2", y);
    $("label-" + band).setAttribute("y", (Number(y) + 4).toFixed(1));
    show("label-" + band, Number(at.toFixed(1)));
  }
}

function drawChart(history) {
  const pts = (Array.isArray(history) ? history : []).filter((s) => typeof s.percent === "number");
  const t0 = pts.length ? pts[0].t : 0;
  const span = pts.length ? pts[pts.length - 1].t - t0 : 0;
  const xy = pts.map((s, i) => {
    const f = span > 0 ? (s.t - t0) / span : (pts.length > 1 ? i / (pts.length - 1) : 1);
    return (40 + f * 590).toFixed(1) + "," + chartY(s.percent);
  });
  const line = $("line");
  line.setAttribute("points", xy.join(" "));
  line.setAttribute("data-points", String(xy.length));
  show("chart-span", pts.length + " samples over " + span.toFixed(1) + " s");
}

function render(d) {
  const m = d.memory || {}, c = d.cache || {}, g = d.gc || {};
  const status = $("status");
  status.setAttribute("data-status", String(m.status || ""));
  show("status", m.status);
  show("mem-percent", unit(m.percent, 1, " %"));
  show("mem-rss", unit(m.rss_mb, 1, " MB"));
  const used = unit(m.used_mb, 0, " / "), limit = unit(m.limit_mb, 0, " MB");
  show("mem-used", used && limit ? used + limit : null);
  show("mem-source", m.source);
  show("cache-items", c.items);
  show("cache-size", unit(c.size_mb, 2, " MB"));
  show("cache-hit-rate", unit(typeof c.hit_rate === "number" ? c.hit_rate * 100 : null, 1, " %"));
  show("cache-evictions", c.evictions);
  show("gc-mode", g.mode);
  show("gc-counts", Array.isArray(g.counts) ? g.counts.join(" / ") : null);
  show("gc-collections", Array.isArray(g.generations)
    ? g.generations.map((s) => s.collections).join(" / ") : null);
  show("gc-frozen", g.frozen);
  const body = $("actions");
  body.replaceChildren();
  const actions = (d.governor && d.governor.last_actions) || [];
  for (const a of actions.slice().reverse()) {
    const row = body.insertRow();
    const freed = a.improvement ? a.improvement.mb_freed : null;
    for (const [value, num] of [[a.kind, 0], [a.reason, 0], [freed, 1], [a.duration_ms, 1]]) {
      const cell = row.insertCell();
      cell.textContent = value == null ? "\u2013" : String(value);
      if (num) cell.className = "num";
    }
  }
  if (!actions.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 4;
    cell.textContent = "none yet";
  }
  drawBands(m.bands);
  drawChart(d.history);
  refreshes += 1;
  const updated = $("last-updated");
  updated.setAttribute("data-refreshes", String(refreshes));
  show("last-updated", "updated " + new Date().toLocaleTimeString());
}

function schedule() { clearTimeout(timer); timer = setTimeout(poll, 2000); }

async function poll() {
  let res;
  try {
    res = await fetch(PREFIX + "/stats", {
      headers: token ? {Authorization: "Bearer " + token} : {}, cache: "no-store"});
  } catch (e) {
    problem("cannot reach " + PREFIX + "/stats: " + e);
    return schedule();
  }
  if (res.status === 401 || res.status === 403) {
    let why = token ? "token refused" : "an API token is needed";
    try { why = (await res.json()).error.message || why; } catch (e) { /* keep the default */ }
    $("token-form").hidden = false;
    problem(why + " (HTTP " + res.status + ")");
    return;  // wait for a token
  }
  if (!res.ok) {
    problem("stats answered HTTP " + res.status);
    return schedule();
  }
  try {
    render(await res.json());
    problem("");
  } catch (e) {
    problem("unreadable stats: " + e);
  }
  schedule();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  try { sessionStorage.setItem(KEY, token); } catch (e) { /* kept for this page only */ }
  $("token").value = "";
  $("token-form").hidden = true;
  problem("");
  poll();
});
poll();
</script>
</body>
</html>
"""


@functools.lru_cache(maxsize=8)
def dashboard_csp(prefix: str) -> str:
    """The page's Content-Security-Policy: its own script and style (by hash) and requests to
    its origin, nothing else; no framing, no form submission, no ``<base>``."""
    page = dashboard_html(prefix)
    script, style = (_inline(page, tag) for tag in ("script", "style"))
    return (
        f"default-src 'none'; script-src '{_sha256(script)}'; style-src '{_sha256(style)}'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _inline(page: str, tag: str) -> str:
    found = re.search(f"<{tag}>(.*?)</{tag}>", page, re.S)
    if found is None:
        raise RuntimeError(f"the dashboard page lost its <{tag}>")
    return found[1]


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@functools.lru_cache(maxsize=8)
def dashboard_html(prefix: str) -> str:
    """The dashboard page for an API mounted at ``prefix`` (e.g. ``/api/v1/memory``)."""
    prefix = prefix.rstrip("/")
    as_js = json.dumps(prefix).replace("<", "\\u003c").replace(">", "\\u003e")
    as_js = as_js.replace("&", "\\u0026")
    return _PAGE.replace("__PREFIX_JSON__", as_js).replace(
        "__PREFIX_HTML__", html.escape(prefix, quote=True)
    )
