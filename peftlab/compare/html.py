"""The self-contained HTML report: table, embedded figures, configurations.

(This module is ``peftlab.compare.html``; ``import html`` below is the standard
library's, as imports are absolute.)
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

from peftlab.compare.formats import caption, columns
from peftlab.files import atomic_write_text
from peftlab.compare.grouping import Row
from peftlab.runs import Run

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}
td.p{text-align:left;font-family:ui-monospace,monospace}
tr.best td{font-weight:bold;background:#eef8ee}
tr.noise td{background:#f6fbf6}
.note{color:#555;font-size:13px}
figure{display:inline-block;margin:0.5em}
img{max-width:100%}
pre{background:#f7f7f7;padding:0.8em;overflow:auto;font-size:12px}
details{margin:0.4em 0}
summary{cursor:pointer;font-family:ui-monospace,monospace}
"""


_LABEL = ' class="p"'  # configuration cells: left-aligned, monospace


def _html_table(rows: Sequence[Row]) -> str:
    cols = columns(rows)
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = []
    for r in rows:
        cls = "best" if r.best else "noise" if r.within_noise else ""
        cells = "".join(f"<td{_LABEL if c.kind == 'label' else ''}>{html.escape(c.cell(r))}</td>" for c in cols)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _per_class_html(rec: Run) -> str:
    """The run's test per class and confusion matrix (rows: true class), when its task recorded them."""
    details = (rec.summary or {}).get("test_details")
    if not isinstance(details, dict) or not details.get("confusion") or not details.get("per_class"):
        return ""
    labels = [str(x) for x in details["labels"]]
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "f1", "support"))
    head += "".join(f"<th>{html.escape(x)}</th>" for x in labels)
    body = []
    for i, label in enumerate(labels):
        c = details["per_class"].get(label, {})
        cells = "".join(f"<td>{c.get(k, 0):.4f}</td>" for k in ("precision", "recall", "f1"))
        counts = "".join(f"<td>{v}</td>" for v in details["confusion"][i])
        body.append(f"<tr><td{_LABEL}>{html.escape(label)}</td>{cells}<td>{c.get('support', '')}</td>{counts}</tr>")
    return (f'<p class="note">test per class, seed {html.escape(str(rec.seed))} (confusion matrix: rows true, '
            f"columns predicted)</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _configuration_html(row: Row) -> str:
    """A ``<details>`` with the row's runs and the resolved config of its first run."""
    import yaml

    rec = row.records[0]
    cfg = yaml.safe_dump(rec.config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    runs = "\n".join(
        f"{x.path}  seed={x.seed}  status={x.status}  overrides: {' '.join(x.overrides()) or '(none)'}"
        for x in row.records
    )
    return (
        f"<details><summary>{html.escape(row.label)} {html.escape(row.mark)}</summary>"
        f"<p class=\"note\">runs</p><pre>{html.escape(runs)}</pre>"
        f"{''.join(_per_class_html(x) for x in row.records)}"
        f"<p class=\"note\">resolved config ({html.escape(str(rec.path))})</p><pre>{html.escape(cfg)}</pre></details>"
    )


def html_report(
    rows: Sequence[Row],
    records: Sequence[Run],
    figures: Sequence[str | os.PathLike],
    out_file: str | os.PathLike,
    title: str = "peftlab compare",
    notes: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML file: the table (ranked and marked by
    validation, test reported at the selected checkpoint), the ``notes``
    (ranking, datasets, single seeds, left-out runs), the figures (base64 PNG
    data URIs), and each configuration's resolved config and runs in a
    ``<details>``. Needs no server and no other file."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(records)} run(s) in {len(rows)} configuration(s). {html.escape(caption(rows))}</p>',
        _html_table(rows),
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes if n]
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
            name = html.escape(Path(fig).stem)
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
                f"<figcaption class=\"note\">{name}</figcaption></figure>"
            )
    parts.append("<h2>Configurations</h2>")
    parts += [_configuration_html(r) for r in rows]
    parts.append("</body></html>")
    out = Path(out_file)
    atomic_write_text(out, "\n".join(parts))  # a reader never sees a half-written report, nor a leftover
    return out
