"""HTML helpers of the report: escaping, number formats, tables, notes, the page's CSS and its one script."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#2f6f9f; --bg:#f5f7fa; --card:#fff; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#16324f; color:#fff; padding:28px 0 22px; }
header .wrap, main { max-width:1040px; margin:0 auto; padding:0 24px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:600; }
header p { margin:0; color:#c8d6e5; }
nav { margin-top:14px; font-size:13px; }
nav a { color:#dbe7f3; margin-right:14px; text-decoration:none; border-bottom:1px dotted #9fb3c8; }
main { padding-top:22px; padding-bottom:40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 22px;
  margin:0 0 18px; }
h2 { margin:0 0 12px; font-size:19px; font-weight:600; color:#16324f; }
h3 { margin:18px 0 6px; font-size:16px; font-weight:600; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { text-align:left; padding:5px 10px 5px 0; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:500; width:34%; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; width:auto; white-space:nowrap; }
table.timings th, table.timings td { width:auto; }
table.timings td.bar-cell { width:38%; }
tr.total td { font-weight:600; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { white-space:pre-wrap; overflow-wrap:anywhere; background:#fbfcfd; border:1px solid var(--line);
  border-radius:4px; padding:8px 10px; margin:0 0 10px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(135px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fbfcfd; }
.card .value { font-size:24px; font-weight:600; color:var(--accent); font-variant-numeric:tabular-nums; }
.card .label { font-size:13px; color:var(--muted); }
.bar { background:#e9eef3; border-radius:3px; height:12px; min-width:160px; }
.bar span { display:block; height:12px; border-radius:3px; background:var(--accent); }
figure { margin:10px 0 22px; }
figure img { display:block; max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
.note { color:#8a4b08; background:#fff8e6; border:1px solid #f3d9a4; border-radius:6px; padding:8px 12px; }
.muted { color:var(--muted); }
.warnings { color:#7a2e0b; background:#fff4ed; border:1px solid #f0b58f; border-radius:6px; padding:8px 14px;
  margin:0 0 14px; }
.warnings ul { margin:4px 0 0; padding-left:20px; }
.scroll { max-height:420px; overflow-y:auto; border:1px solid var(--line); border-radius:4px; }
.scroll table th { position:sticky; top:0; background:var(--card); }
p.muted { font-size:13px; margin:10px 0 0; }
footer { color:var(--muted); font-size:13px; text-align:center; padding:0 0 28px; }
"""

# Records how many figures decoded once the page has loaded (read by the headless-browser test).
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt_int(value: Any) -> str:
    if is_number(value) and float(value).is_integer():
        return f"{int(value):,}"
    return "?" if value is None else str(value)


def fmt_float(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "not recorded"


def fmt_seconds(value: Any) -> str:
    if not is_number(value):
        return "not recorded"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min ({value:.0f} s)"


def fmt_value(value: Any) -> str:
    """A parameter value as Python shows it (what the user passed)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def rows(rows: Iterable[tuple[str, str]], raw: bool = False) -> str:
    """A two-column table; values are escaped unless ``raw`` (already HTML)."""
    body = "".join(f"<tr><th>{e(k)}</th><td>{v if raw else e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def card(value: str, label: str) -> str:
    return f'<div class="card"><div class="value">{e(value)}</div><div class="label">{e(label)}</div></div>'
