"""A small, self-contained HTML report per training run (``report.html`` among the run's artefacts).

Why a file and not only the MLflow UI: the report travels. It embeds its plots as data URIs, so it can
be mailed, attached to a ticket or opened from a downloaded artefact folder without a tracking server;
it also links the artefacts by their relative paths for when it sits beside them.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from typing import Any, Sequence

import yaml


def _img(path: str, artifact: str, caption: str) -> str:
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    return (f'<figure><a href="{html.escape(artifact)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"></a><figcaption>{html.escape(caption)}</figcaption></figure>')


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em;max-height:30em}.meta td{text-align:left}"""


def write_report(path: str, *, title: str, meta: dict[str, Any], final: dict[str, float],
                 history: list[dict[str, float]], images: Sequence[tuple[str, str, str]], config: dict[str, Any],
                 manifest: dict[str, Any], artifacts: Sequence[str]) -> str:
    """Write the report. ``images`` are (local png, artefact path, caption); ``artifacts`` are linked."""
    epoch_cols = ["epoch"] + sorted({k for h in history for k in h if k != "epoch"})
    counts = manifest.get("counts", {})
    split_rows = [{"split": s, "rows": c.get("rows", "")} for s, c in counts.items()]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        "<table class='meta'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                         for k, v in meta.items()) + "</table>",
        "<h2>Test metrics</h2>", _table([{"metric": k, "value": v} for k, v in final.items()], ["metric", "value"]),
        "<h2>Plots</h2>", "".join(_img(p, a, c) for p, a, c in images if os.path.exists(p)),
        "<h2>Per epoch</h2>", _table(history, epoch_cols),
        "<h2>Dataset</h2>",
        f"<p>{html.escape(str(manifest.get('dataset', '')))} version {html.escape(str(manifest.get('version', '')))}, "
        f"{len(manifest.get('label_names', []))} classes, quarantined {html.escape(str(manifest.get('quarantined', 0)))}"
        f" (<a href='dataset/manifest.json'>manifest.json</a>)</p>",
        _table(split_rows, ["split", "rows"]),
        "<h2>Artefacts</h2><ul>" + "".join(f"<li><a href='{html.escape(a)}'>{html.escape(a)}</a></li>" for a in artifacts)
        + "</ul>",
        "<h2>Config</h2><pre>" + html.escape(yaml.safe_dump(config, sort_keys=False)) + "</pre>",
        f"<p><small>written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by sparkzoo</small></p>",
        "</body></html>",
    ]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return path
