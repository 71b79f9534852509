"""HTML rendering of the report: table cells, and one jinja2 template (autoescaped) with inline CSS.

The page is self-contained in the offline sense: no external script, stylesheet or font; figures are PNG
files and tables CSV files beside it (relative links), so the folder opens from disk with no server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

from .collect import method_colour

MAX_ROWS = 300
"""Rows shown per HTML table; the CSV beside the report always holds all of them."""
COLOUR_COLUMNS = ("method", "other_method", "method_a", "method_b")
"""Columns whose values are method names, shown with the method's fixed colour (docs/study.md §1.1)."""


def fmt(v: Any) -> str:
    """A table cell as text: 4 significant digits for floats, yes/no for booleans."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def mib(v: Any) -> float | None:
    """Bytes as MiB (None when missing)."""
    return float(v) / 2**20 if isinstance(v, (int, float)) else None


@dataclass
class Table:
    """A rendered table: header, cells (text, colour or None), row CSS classes, and its CSV link."""

    columns: list[str]
    rows: list[list[tuple[str, str | None]]]
    row_classes: list[str] = field(default_factory=list)
    csv: str = ""
    total: int = 0
    caption: str = ""


def make_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, csv: str = "",
               caption: str = "", row_class: Callable[[dict[str, Any]], str] | None = None,
               limit: int = MAX_ROWS) -> Table:
    """A Table of dict rows (columns default to every key in order of appearance)."""
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    cells = []
    for r in rows[:limit]:
        line = []
        for c in columns:
            v = r.get(c)
            line.append((fmt(v), method_colour(str(v)) if c in COLOUR_COLUMNS and v not in (None, "") else None))
        cells.append(line)
    classes = [row_class(r) if row_class else "" for r in rows[:limit]]
    return Table(list(columns), cells, classes, csv, len(rows), caption)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1150px;margin:0 auto;padding:1em 2em 4em;background:#fff}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.6em;color:#234}h4{margin:1em 0 .3em}
nav.toc{background:#f3f5f8;border:1px solid #dde;padding:.5em 1.2em;columns:2;font-size:.95em}
nav.toc ul{margin:.2em 0;padding-left:1.2em}
.tablewrap{overflow-x:auto;margin:.5em 0 1em}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#eef1f5;position:sticky;top:0}
tr:nth-child(even) td{background:#fafbfc}
td.wrap{white-space:normal;max-width:42em}
.sw{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:4px;vertical-align:-1px}
tr.flag td{color:#777;font-style:italic}tr.claimed td{font-weight:600}
.v-holds{color:#116611;font-weight:600}.v-does-not-hold{color:#aa1111;font-weight:600}
.v-inconclusive{color:#996600;font-weight:600}
figure{display:inline-block;margin:.4em .6em .8em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e3e3e3}
figcaption{font-size:.8em;color:#666}
.def{background:#f6f8fa;border-left:4px solid #99a;padding:.3em .8em;margin:.4em 0}
.note{color:#8a5a00}.muted{color:#777}.na{color:#999;font-style:italic}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:12px}
details{margin:.3em 0}summary{cursor:pointer}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dl.kv dt{font-weight:600}dl.kv dd{margin:0}
p.generated{margin:.1em 0 .6em;font-size:.85em}
section.summary{background:#f7f9fc;border:1px solid #d5dce8;border-radius:6px;padding:.2em 1.1em .6em;
margin:.4em 0 1.4em}
section.summary h2{margin:.3em 0 0;border-bottom:none;font-size:1.35em}
section.summary h3{margin:1em 0 .2em;font-size:1.05em}
p.lede{margin:.1em 0 .5em}
div.findings-head{display:flex;align-items:center;gap:1em}
p.setup{margin:.3em 0 0;font-size:.85em}
p.setup.far{border-left:4px solid #d9a400;padding-left:.6em;background:#fff8e1}
table.setup-table{font-size:12.5px;margin:.3em 0 .8em}table.setup-table td{white-space:normal}
table.verdicts{font-size:13px;width:100%}table.verdicts td{vertical-align:middle;white-space:normal}
table.verdicts td.claimtext{max-width:40em;font-size:12.5px}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:600;white-space:nowrap}
.b-holds{background:#dff3df;color:#0d5a0d}.b-does-not-hold{background:#f8dddd;color:#8f1111}
.b-inconclusive{background:#f6ecd2;color:#7a5300}
table.headline{font-size:12px}table.headline td:first-child{white-space:normal;min-width:10em}
figure.iv{margin:0;display:flex;align-items:center;gap:.7em}figure.iv figcaption{font-size:11px;max-width:12em}
svg.iv text{font:9.5px system-ui,sans-serif;fill:#333}svg.iv text.lab{text-anchor:end}
svg.iv line.axis{stroke:#999;stroke-width:1}svg.iv line.zero{stroke:#888;stroke-width:1;stroke-dasharray:3 2}
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><style>{{ css|safe }}</style></head>
<body><main>
{%- macro table(t) -%}
{% if t.caption %}<p class="muted">{{ t.caption }}</p>{% endif %}
<div class="tablewrap"><table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}{% set cls = t.row_classes[loop.index0] if t.row_classes else "" %}
<tr{% if cls %} class="{{ cls }}"{% endif %}>
{%- for text, colour in row %}<td{% if text|length > 60 %} class="wrap"{% endif %}>
{%- if colour %}<span class="sw" style="background:{{ colour }}"></span>{% endif %}{{ text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
<p class="muted">{% if t.total > t.rows|length %}First {{ t.rows|length }} of {{ t.total }} rows. {% endif %}
{%- if t.csv %}<a href="{{ t.csv }}">CSV</a>{% endif %}</p>
{%- endmacro -%}
{%- macro figures(fs) -%}
{% for f in fs %}<figure><img src="{{ f.src }}" alt="{{ f.caption }}" loading="eager">
<figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}
{%- endmacro -%}
{%- macro unavailable(s) -%}<p class="na">Not available: {{ s.message }}</p>{%- endmacro -%}
{%- macro interval(p) -%}
<figure class="iv"><svg class="iv" width="{{ p.width }}" height="{{ p.height }}"
 viewBox="0 0 {{ p.width }} {{ p.height }}" role="img" aria-label="{{ p.caption }}">{% set base = p.height - 12 %}
{%- if p.zero is not none %}<line class="zero" x1="{{ p.zero }}" x2="{{ p.zero }}" y1="0" y2="{{ base }}"/>{% endif %}
{%- for r in p.rows %}<g><title>{{ r.title }}</title>
<text class="lab" x="{{ p.x0 - 5 }}" y="{{ r.y + 3 }}">{{ r.label }}</text>
<line x1="{{ r.x_low }}" x2="{{ r.x_high }}" y1="{{ r.y }}" y2="{{ r.y }}" stroke="{{ r.line }}" stroke-width="2.2"/>
<circle cx="{{ r.x_mean }}" cy="{{ r.y }}" r="2.7" fill="{{ r.dot }}"/></g>{% endfor %}
<line class="axis" x1="{{ p.x0 }}" x2="{{ p.x1 }}" y1="{{ base }}" y2="{{ base }}"/>
{%- for x, label in p.ticks %}
<text x="{{ x }}" y="{{ base + 10 }}" text-anchor="{{ 'start' if loop.first else 'end' }}">{{ label }}</text>
{%- endfor %}</svg>
<figcaption class="muted">{{ p.caption }}
{%- if p.more %}; {{ p.more }} more in the evidence{% endif %}</figcaption></figure>
{%- endmacro -%}

<h1>{{ title }}</h1>
<p class="muted generated">Generated {{ generated }} by lowrank-lens {{ version }} from <code>{{ study_dir }}</code>;
read from the study's files only (no checkpoint is loaded, no metric computed).</p>

<section id="summary" class="summary">
<div class="findings-head"><h2>Findings</h2>
{%- if summary.setup %}<p id="setup-distance" class="setup{% if summary.setup.far %} far{% endif %}"
 title="{{ summary.setup.line }}">{{ summary.setup.short }}
<a href="#setup-table">Details</a></p>{% endif %}</div>
<p class="lede">{{ summary.lede }}</p>
{% if summary.claims %}
<table class="verdicts" id="verdicts"><thead><tr><th>#</th><th>claim (docs/study.md &sect;5)</th><th>verdict</th>
<th>what the verdict compared</th></tr></thead><tbody>
{% for c in summary.claims %}<tr><td><a href="#claim-{{ c.id }}">{{ c.id }}</a></td>
<td class="claimtext">{{ c.text }}</td>
<td><span class="badge b-{{ c.verdict|replace(' ', '-') }}">{{ c.verdict }}</span></td>
<td>{% if c.plot %}{{ interval(c.plot) }}{% else %}<a class="muted" href="#claim-{{ c.id }}">no interval: see the
evidence</a>{% endif %}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p class="na">Claims not available: {{ summary.claims_message }}</p>{% endif %}
{% if summary.headline %}<h3>Headline metric per method, beside perplexity</h3>
<p class="muted">{{ summary.headline.caption }}</p>
<div class="tablewrap"><table class="headline" id="headline"><thead><tr><th>quantity (metric)</th>
{%- for m, colour, n in summary.headline.methods %}<th><span class="sw" style="background:{{ colour }}"></span>{{ m }}
{%- if n %} <span class="muted">({{ n }})</span>{% endif %}</th>{% endfor %}</tr></thead><tbody>
{% for r in summary.headline.rows %}<tr title="{{ r.title }}"><td><strong>{{ r.label }}</strong>
{%- if r.metric %} <span class="muted">({{ r.metric }})</span>{% endif %}</td>
{%- for c in r.cells %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>{% endif %}
<h3>Differences at matched perplexity</h3>
{% for l in summary.matched.lines %}<p>{{ l }}</p>{% endfor %}
{% if summary.matched.rows %}<div class="tablewrap"><table class="matched" id="matched-summary"><thead><tr>
<th>headline column</th><th>pairs that differ</th><th>methods by their mean there, highest first</th></tr></thead>
<tbody>
{% for r in summary.matched.rows %}<tr><td>{{ r.column }}</td><td>{{ r.different }} of {{ r.compared }}</td>
<td class="wrap">
{%- for m, colour, sym in r.chain %}{% if sym %} <strong>{{ sym }}</strong> {% endif %}<span class="sw"
 style="background:{{ colour }}"></span>{{ m }}{% endfor %}</td></tr>
{% endfor %}</tbody></table></div>
<p class="muted">&gt;: that adjacent pair differs (Welch, Holm-corrected, beyond the seed spread); &asymp;: its
difference is not claimed. Every pair is in the <a href="#matched">matched-perplexity section</a>.</p>{% endif %}
<p class="muted">Details follow: every setting, table and figure, the statistics, and each claim's evidence.</p>
</section>

<nav class="toc"><strong>Contents</strong><ul>
{% for id, name, children in toc %}<li><a href="#{{ id }}">{{ name }}</a>{% if children %}<ul>
{% for cid, cname in children %}<li><a href="#{{ cid }}">{{ cname }}</a></li>{% endfor %}</ul>{% endif %}</li>
{% endfor %}</ul></nav>

<h2 id="overview">Overview</h2>
{% if summary.setup %}<p class="note">{{ summary.setup.line }}</p>
<table id="setup-table" class="setup-table"><thead><tr><th>aspect</th><th>this study</th>
<th>the paper's protocol</th></tr></thead><tbody>
{% for r in summary.setup.rows %}<tr><td>{{ r["aspect"] }}</td><td>{{ r["this study"] }}</td>
<td>{{ r["the paper"] }}</td></tr>{% endfor %}</tbody></table>{% endif %}
<dl class="kv">{% for k, v in overview.spec %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
{% for n in overview.notes %}<p class="note">{{ n }}</p>{% endfor %}
<h3 id="settings">Settings used</h3>
<p>Each metric's options as recorded in its cached results (the study's protocol unless overridden), and the
evaluation settings the metrics read the validation tokens with.
{% if overview.evaluation %}Evaluation (every metric): <code>{{ overview.evaluation }}</code>.{% endif %}</p>
{{ table(overview.settings) }}
{% if overview.timings %}<h3 id="timings">Timings</h3>{{ table(overview.timings) }}{% endif %}

<h2 id="runs">Runs</h2>
<p>{{ runs.note }}</p>
{{ table(runs.table) }}
{{ figures(runs.figures) }}

{% for dim in dimensions %}
<h2 id="{{ dim.id }}">{{ dim.title }}</h2>
{% for m in dim.metrics %}
<section class="metric" id="{{ m.id }}" data-metric="{{ m.name }}">
<h3>{{ m.name }}</h3>
<p class="def">{{ m.definition }}</p>
<p class="muted">Subjects: {{ m.subject_kind }}
{%- if m.headline %}; headline column: <code>{{ m.headline }}</code>{% endif %};
options: <code>{{ m.config }}</code>; evaluation: <code>{{ m.evals }}</code>; table from {{ m.source }}.</p>
{% for n in m.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if m.skipped %}<p class="note">Skipped subjects:
{% for reason, n in m.skipped %}{{ n }} &times; {{ reason }}{% if not loop.last %}; {% endif %}{% endfor %}</p>
{% endif %}
{% if m.plot_error %}<p class="note">plot() failed: {{ m.plot_error }}</p>{% endif %}
{% if not m.table.total %}<p class="na">No results: this metric was not computed for the study's runs
(run <code>lowrank-lens analyze</code>).</p>{% endif %}
{{ figures(m.figures) }}
{% if m.table.total %}<h4>Table</h4>{{ table(m.table) }}{% endif %}
{% if m.summary %}<h4>Over seeds (mean &plusmn; 95% CI half-width, n)</h4>{{ table(m.summary) }}{% endif %}
{% if m.summary_error %}<p class="note">{{ m.summary_error }}</p>{% endif %}
</section>
{% endfor %}{% endfor %}

<h2 id="statistics">Statistics</h2>
{% if statistics.available %}
{% for p in statistics.intro %}<p>{{ p }}</p>{% endfor %}
{% if statistics.collapsed %}<details><summary>Pairwise differences (single seed: nothing is claimed)</summary>
{% endif %}
{% for t in statistics.tables %}{{ table(t) }}{% endfor %}
{% if statistics.collapsed %}</details>{% endif %}
{% else %}{{ unavailable(statistics) }}{% endif %}

<h2 id="matched">Matched perplexity</h2>
{% if matched.available %}
{% for p in matched.intro %}<p>{{ p }}</p>{% endfor %}
{{ table(matched.matches) }}
<ul class="muted">{% for l in matched.lines %}<li>{{ l }}</li>{% endfor %}</ul>
{{ figures(matched.figures) }}
{% if matched.collapsed %}<details>
<summary>Metrics at the matched checkpoints (single seed: nothing is claimed)</summary>{% endif %}
{% for t in matched.tables %}{{ table(t) }}{% endfor %}
{% if matched.collapsed %}</details>{% endif %}
{% for n in matched.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% else %}{{ unavailable(matched) }}{% endif %}

<h2 id="claims">Claims (docs/study.md &sect;5)</h2>
{% if claims.available %}
{% for p in claims.intro %}<p>{{ p }}</p>{% endfor %}
<div class="tablewrap"><table><thead><tr><th>#</th><th>claim</th><th>verdict</th><th>evidence</th></tr></thead><tbody>
{% for c in claims.claims %}<tr id="claim-{{ c.id }}"><td>{{ c.id }}</td><td class="wrap">{{ c.text }}</td>
<td class="v-{{ c.verdict|replace(' ', '-') }}">{{ c.verdict }}</td><td class="wrap">{{ c.evidence }}</td></tr>
{% endfor %}</tbody></table></div>
<p class="muted"><a href="{{ claims.csv }}">CSV</a></p>
{% else %}{{ unavailable(claims) }}{% endif %}

<h2 id="downstream">Downstream</h2>
{% if downstream.tables %}{{ figures(downstream.figures) }}{% for t in downstream.tables %}{{ table(t) }}{% endfor %}
{% else %}<p class="na">Not available: {{ downstream.message }}</p>{% endif %}

<h2 id="prediction">Prediction of downstream accuracy</h2>
{% if prediction.note %}<p class="note">{{ prediction.note }}</p>{% endif %}
{% if prediction.tables or prediction.figures %}{{ figures(prediction.figures) }}
{% for t in prediction.tables %}{{ table(t) }}{% endfor %}
{% else %}<p class="na">Not available: {{ prediction.message }}</p>{% endif %}

<h2 id="provenance">Configs and provenance</h2>
<details><summary>Study spec (study.json)</summary><pre>{{ provenance.spec }}</pre></details>
{% for r in provenance.runs %}<details><summary>{{ r.summary }}</summary><pre>{{ r.config }}</pre></details>
{% endfor %}
</main></body></html>
"""


def render(context: dict[str, Any]) -> str:
    """The report page from its context (every value is autoescaped)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return env.from_string(TEMPLATE).render(css=CSS, **context)
