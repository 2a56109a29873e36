"""Offline HTML report of one run, built from ``OUT/_summary.json``.

``build_report(out_dir)`` writes ``OUT/_report/index.html`` plus chart PNGs beside it. The
page uses no network at all (no CDN, no external JS/CSS/fonts), so it can be opened from
a cluster's output bucket copied to a laptop, or attached to a ticket.

Everything shown comes from the summary, which contains user-controlled strings (file
names, labels, model ids, the command line). All of them are HTML-escaped; chart file
names are generated, never derived from data. Optional keys may be missing (older or
failed runs): the matching section then says "not recorded" instead of failing.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .charts import OTHER, ChartWriter

logger = logging.getLogger(__name__)

SUMMARY_NAME = "_summary.json"
REPORT_DIR_NAME = "_report"
DEFAULT_MAX_FILES = 30
DEFAULT_MAX_LABELS = 40
STACK_LABELS = 9  # labels shown per file in stacked charts; the rest become "(other)"
# Table cells never break inside a word (a file name squeezed to 3 characters a line is unreadable), except a
# word longer than this (a 400-character file name), which may break anywhere in a cell of at least 24em.
LONG_WORD = 80

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1150px;padding:0 16px;color:#1d2430;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #e3e7ee;padding-bottom:4px;margin-top:32px}
h3{margin-bottom:6px}.muted{color:#667085}.badge{display:inline-block;padding:2px 10px;border-radius:10px;
color:#fff;font-weight:600;font-size:.85em;vertical-align:middle}.ok{background:#2e9d4f}.bad{background:#c8323a}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}.card{border:1px solid #e3e7ee;border-radius:8px;
padding:10px 16px;min-width:150px;background:#f8fafc}.card .v{font-size:1.5em;font-weight:700}
.card .k{color:#667085;font-size:.85em}.eq{font-size:1.25em;margin:12px 0;padding:10px 14px;background:#eef4ff;
border-radius:8px}.eq b{font-size:1.15em}.warn{background:#fff4e5;border-left:4px solid #f59e0b;padding:8px 12px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}th,td{border:1px solid #e3e7ee;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f1f4f9}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.wrap{overflow-x:auto}td.name{white-space:nowrap}td.prose{white-space:normal}
td.long{word-break:break-all;min-width:24em}.arg{white-space:nowrap}code{background:#f1f4f9;padding:1px 4px;
border-radius:4px}ul.warn{margin:4px 0;padding-left:28px}
img.chart,svg.chart{max-width:100%;height:auto;display:block;margin:8px 0}
footer{margin-top:40px;font-size:.8em;color:#667085}
"""


# ---- entry points ---------------------------------------------------------------------------


def load_summary(out_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``OUT/_summary.json``; clear errors name the missing run output."""
    out = Path(out_dir)
    path = out / SUMMARY_NAME
    if not out.is_dir():
        raise FileNotFoundError(
            f"run output directory {str(out)!r} does not exist: pass the --output directory of a sparkcurate run"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"no run summary {SUMMARY_NAME} in {str(out)!r} (expected {str(path)!r}): is this the output "
            f"directory of a finished sparkcurate run? Every run writes it at the end, even a failed one"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"run summary {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"run summary {str(path)!r} must hold a JSON object, got {type(summary).__name__}")
    return summary


def build_report(
    out_dir: str | Path,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_labels: int = DEFAULT_MAX_LABELS,
    use_matplotlib: bool | None = None,
) -> Path:
    """Write ``OUT/_report/index.html`` (+ chart PNGs) from the run summary; return the HTML path.

    Charts are matplotlib PNGs when matplotlib is installed (``use_matplotlib=None``), else
    inline SVG bars; tables with the exact numbers are always rendered.
    """
    if max_files < 1 or max_labels < 1:
        raise ValueError("max_files and max_labels must be at least 1")
    summary = load_summary(out_dir)
    report_dir = Path(out_dir) / REPORT_DIR_NAME
    report_dir.mkdir(parents=True, exist_ok=True)
    for stale in report_dir.glob("chart-*.png"):  # charts of a previous build of this report
        stale.unlink()
    charts = ChartWriter(report_dir, use_matplotlib=use_matplotlib)
    page = render_html(summary, charts, max_files=max_files, max_labels=max_labels)
    index = report_dir / "index.html"
    tmp = report_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)  # a reader never sees a half-written page
    logger.info("report written to %s (%d charts)", index, len(charts.files))
    return index


def render_html(summary: Mapping[str, Any], charts: ChartWriter, *, max_files: int = DEFAULT_MAX_FILES,
                max_labels: int = DEFAULT_MAX_LABELS) -> str:
    """The whole page as a string; charts are written through ``charts`` as a side effect."""
    sections = [
        _header(summary),
        _headline(summary),
        _throughput(summary),
        _models(summary),
        _labels(summary, charts, max_labels),
        _files(summary, charts, max_files),
        _histograms(summary, charts),
        _rejects(summary, charts),
        _environment(summary),
    ]
    title = f"sparkcurate run report — {_text(summary.get('output'), 'unknown output')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # Forbid any network fetch: the page must be self-contained (images are local files).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file: data:; "
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<footer>Generated from <a href=\"../{SUMMARY_NAME}\">{SUMMARY_NAME}</a> by sparkcurate "
        f"{_e(_text(_dict(summary.get('versions')).get('sparkcurate'), ''))}.</footer>\n</body></html>\n"
    )


# ---- small helpers ----------------------------------------------------------------------------


def _e(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _text(value: Any, default: str = "—") -> str:
    return default if value is None or value == "" else str(value)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """Counts from JSON; bools and junk are treated as missing rather than crashing the report."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _n(value: Any) -> str:
    number = _int(value)
    if number is not None:
        return f"{number:,}"
    number_f = _float(value)
    return f"{number_f:,.1f}" if number_f is not None else "—"


def _pct(part: int, whole: int | None) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "—"


def _counts(mapping: Any) -> list[tuple[str, int]]:
    """``{label: count}`` -> [(label, count)] largest first, then by name (stable output)."""
    pairs = [(str(k), c) for k, v in _dict(mapping).items() if (c := _int(v)) is not None]
    return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))


def _duration(seconds: Any) -> str:
    value = _float(seconds)
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(round(value)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    """Escaped table; columns in ``numeric`` are right-aligned and numbers get thousands separators."""
    num = set(numeric)
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in num:
                shown = cell if isinstance(cell, str) else _n(cell)
                cells.append(f'<td class="num">{_e(shown)}</td>')
            else:
                cells.append(_text_cell(_text(cell)))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _cell_class(text: str) -> str:
    """``name``: one word (file name, label, column), kept on one line; ``prose``: wraps between words only;
    ``long``: holds a word over LONG_WORD characters, which may break anywhere."""
    words = text.split()
    if any(len(word) > LONG_WORD for word in words):
        return "long"
    return "prose" if len(words) > 1 else "name"


def _text_cell(text: str, inner: str | None = None) -> str:
    """A table cell for ``text`` (``inner``: its HTML when not just the escaped text) that never breaks inside
    a word (:func:`_cell_class`)."""
    return f'<td class="{_cell_class(text)}">{_e(text) if inner is None else inner}</td>'


def _command_html(command: str) -> str:
    """The command line with each argument kept whole: it wraps between arguments, never inside one."""
    try:
        args = shlex.split(command, posix=False)  # posix=False keeps the quotes, so the line reads as typed
    except ValueError:
        args = command.split()
    return "<code>" + " ".join(f'<span class="arg">{_e(a)}</span>' for a in args) + "</code>"


def _card(key: str, value: str) -> str:
    return f'<div class="card"><div class="v">{_e(value)}</div><div class="k">{_e(key)}</div></div>'


# ---- sections ---------------------------------------------------------------------------------


def _header(s: Mapping[str, Any]) -> str:
    status = _text(s.get("status"), "unknown")
    badge = "ok" if status == "succeeded" else "bad"
    rows = [("command", s.get("command")), ("input", s.get("input")), ("output", s.get("output")),
            ("started", s.get("started_at")), ("finished", s.get("finished_at"))]
    error = s.get("error")
    if error:
        rows.append(("error", error))
    items = "".join(f"<tr><th>{_e(k)}</th>" + (
        _text_cell(_text(v), _command_html(v)) if k == "command" and v else
        _text_cell(_text(v), f"<code>{_e(_text(v))}</code>")) + "</tr>" for k, v in rows)
    return (f'<h1>sparkcurate run report <span class="badge {badge}">{_e(status)}</span></h1>'
            f'<div class="wrap"><table>{items}</table></div>')


def _headline(s: Mapping[str, Any]) -> str:
    """input = output + filtered + rejected, as an equation, flagged when it does not add up."""
    names = ("input_records", "output_records", "filtered_records", "rejected_records")
    nums = [_int(s.get(k)) for k in names]
    shown = [f"{n:,}" if n is not None else "?" for n in nums]
    eq = (f'<div class="eq" id="equation"><b>{shown[0]}</b> input = <b>{shown[1]}</b> output + '
          f'<b>{shown[2]}</b> filtered + <b>{shown[3]}</b> rejected</div>')
    if all(n is not None for n in nums):
        total = nums[1] + nums[2] + nums[3]
        if total != nums[0]:
            eq += (f'<p class="warn">The counts do not add up: output + filtered + rejected = {total:,}, '
                   f"{abs(total - nums[0]):,} {'more' if total > nums[0] else 'fewer'} than the input records.</p>")
    else:
        eq += '<p class="muted">Some counts were not recorded (shown as ?).</p>'
    devices = s.get("devices")
    dev_text = ", ".join(str(d) for d in devices) if isinstance(devices, list) and devices else "—"
    cards = [
        _card("documents / s (whole run)", _n(s.get("docs_per_s"))),
        _card("elapsed", _duration(s.get("elapsed_s"))),
        _card("devices", dev_text),
        _card("kept", _pct(nums[1], nums[0]) if nums[1] is not None else "—"),
    ]
    return f'<h2>Headline</h2>{eq}<div class="cards">{"".join(cards)}</div>'


def _throughput(s: Mapping[str, Any]) -> str:
    """The summary's figures as they are (the README defines each): whole run, classify phase, input splits."""
    rate = _float(s.get("docs_per_s"))
    elapsed = _float(s.get("elapsed_s"))
    devices = s.get("devices") if isinstance(s.get("devices"), list) else []
    rows: list[tuple[str, str]] = [("documents per second, whole run (docs_per_s)", _n(rate)),
                                   ("elapsed, whole run (elapsed_s)", _duration(elapsed)),
                                   ("documents per second, classify phase (classify_docs_per_s)",
                                    _n(s.get("classify_docs_per_s"))),
                                   ("classify phase (classify_s)", _duration(s.get("classify_s"))),
                                   ("devices", str(len(devices)) if devices else "—")]
    if rate is not None and len(devices) > 1:
        rows.append(("documents per second per device, whole run", f"{rate / len(devices):,.1f}"))
    return "<h2>Throughput</h2>" + _table(["measure", "value"], rows, numeric=[1]) + _units(s) + _splits(s)


def _units(s: Mapping[str, Any]) -> str:
    """The input units (files) this run did and reused (``units``): a resumed run reuses what an earlier one
    committed."""
    units = _dict(s.get("units"))
    if not units:
        return ""
    rows = [("units (input files)", _n(units.get("total"))), ("reused from an earlier run", _n(units.get("reused"))),
            ("redone (input or options changed)", _n(units.get("redone"))), ("new", _n(units.get("new"))),
            ("removed (input gone)", _n(units.get("removed"))), ("commit groups", _n(units.get("groups")))]
    return "<h3>Input units</h3>" + _table(["measure", "value"], rows, numeric=[1])


def _splits(s: Mapping[str, Any]) -> str:
    """How the input was cut (``input_splits``): tasks, data per task, waves asked and planned and why."""
    plan = _dict(s.get("input_splits"))
    if not plan:
        return ""
    waves = f"{_n(plan.get('waves'))} planned, {_n(plan.get('waves_asked'))} asked"
    if plan.get("waves_reason"):
        waves += f": {plan['waves_reason']}"
    rows = [("task slots", _n(plan.get("slots"))), ("tasks", _n(plan.get("tasks"))),
            ("data per task, bytes (average)", _n(plan.get("task_bytes"))),
            ("input data, bytes", _n(plan.get("input_bytes"))), ("waves (tasks per slot)", waves)]
    return "<h3>Input splits</h3>" + _table(["measure", "value"], rows)


def _models(s: Mapping[str, Any]) -> str:
    classifiers = [c for c in s.get("classifiers") or [] if isinstance(c, dict)]
    parts = ["<h2>Classifiers and models</h2>"]
    if classifiers:
        rows = []
        for c in classifiers:
            filt = c.get("filter_by")
            filt_text = ", ".join(map(str, filt)) if isinstance(filt, list) and filt else "(no filter)"
            rows.append([c.get("name"), c.get("model"), _text(c.get("revision"), "(not pinned)"),
                         c.get("pred_column"), c.get("prob_column"), filt_text])
        parts.append(_table(["classifier", "model", "revision", "prediction column", "probability column",
                             "keep labels"], rows))
    else:
        parts.append('<p class="muted">No classifiers recorded.</p>')
    models = [m for m in s.get("models") or [] if isinstance(m, dict)]
    if models:
        rows = [[m.get("classifier"), m.get("model"), _text(m.get("revision"), "(not pinned)"), m.get("sha256")]
                for m in models]
        parts.append("<h3>Model files used</h3>" + _table(["classifier", "model", "revision", "sha256"], rows))
    return "".join(parts)


def _labels(s: Mapping[str, Any], charts: ChartWriter, max_labels: int) -> str:
    by_label = _dict(s.get("by_label"))
    parts = ["<h2>Label distribution</h2>"]
    if not by_label:
        return parts[0] + '<p class="muted">No label counts recorded.</p>'
    for clf, mapping in by_label.items():
        pairs = _counts(mapping)
        total = sum(c for _, c in pairs)
        parts.append(f"<h3>{_e(clf)}</h3>")
        if not pairs:
            parts.append('<p class="muted">No predictions.</p>')
            continue
        shown = pairs[:max_labels]
        note = (f'<p class="muted">Chart shows the top {len(shown)} of {len(pairs)} labels; '
                f"{len(pairs) - len(shown)} omitted (all are in the table).</p>" if len(pairs) > len(shown) else "")
        parts.append(charts.bars([k for k, _ in shown], [c for _, c in shown], f"{clf}: documents per label"))
        parts.append(note)
        parts.append(_table(["label", "documents", "share"], [[k, c, _pct(c, total)] for k, c in pairs],
                            numeric=[1, 2]))
    return "".join(parts)


def _files(s: Mapping[str, Any], charts: ChartWriter, max_files: int) -> str:
    """Per source file counts, top-N files by input records, and per-file label mix."""
    by_file = {str(k): v for k, v in _dict(s.get("by_file")).items() if isinstance(v, dict)}
    parts = ["<h2>Per source file</h2>"]
    if not by_file:
        return parts[0] + '<p class="muted">No per-file counts recorded.</p>'
    ordered = sorted(by_file.items(), key=lambda kv: (-(_int(kv[1].get("input")) or 0), kv[0]))
    top = ordered[:max_files]
    omitted = len(ordered) - len(top)
    if omitted:
        parts.append(f'<p class="muted" id="files-omitted">Showing the {len(top):,} largest of {len(ordered):,} '
                     f"files (by input records); {omitted:,} files omitted.</p>")
    rows = [[name, d.get("input"), d.get("output"), d.get("filtered"), d.get("rejected")] for name, d in top]
    parts.append(_table(["file", "input", "output", "filtered", "rejected"], rows, numeric=[1, 2, 3, 4]))
    classifiers = sorted({str(c) for _, d in by_file.items() for c in _dict(d.get("labels"))})
    for clf in classifiers:
        parts.append(_file_labels(clf, top, _dict(s.get("by_label")).get(clf), charts))
    return "".join(parts)


def _file_labels(clf: str, top: list[tuple[str, dict]], overall: Any, charts: ChartWriter) -> str:
    """Stacked chart + table of labels per file for one classifier (top labels, rest as "(other)")."""
    per_file = [(name, dict(_counts(_dict(d.get("labels")).get(clf)))) for name, d in top]
    ranking = _counts(overall) or _counts(
        {k: sum(m.get(k, 0) for _, m in per_file) for k in {k for _, m in per_file for k in m}})
    present = {k for _, m in per_file for k in m}
    series = [k for k, _ in ranking if k in present][:STACK_LABELS]
    has_other = any(k not in series for _, m in per_file for k in m)
    columns = series + ([OTHER] if has_other else [])
    matrix = []
    for _, m in per_file:
        row = [m.get(k, 0) for k in series]
        if has_other:
            row.append(sum(v for k, v in m.items() if k not in series))
        matrix.append(row)
    title = f"{clf}: labels per file"
    chart = charts.stacked([n for n, _ in per_file], columns, matrix, title)
    table = _table(["file"] + columns, [[n] + r for (n, _), r in zip(per_file, matrix)],
                   numeric=range(1, len(columns) + 1))
    return f"<h3>{_e(title)}</h3>{chart}{table}"


def _histograms(s: Mapping[str, Any], charts: ChartWriter) -> str:
    hists = _dict(s.get("prob_histograms"))
    if not hists:
        return ""
    parts = ["<h2>Probability histograms</h2>"]
    for clf, h in hists.items():
        h = _dict(h)
        edges = [_float(x) for x in h.get("edges") or []]
        counts = [_int(x) for x in h.get("counts") or []]
        column = _text(h.get("column"), "probability")
        parts.append(f"<h3>{_e(clf)} <span class=\"muted\">({_e(column)})</span></h3>")
        if not counts or None in edges or None in counts or len(edges) != len(counts) + 1:
            parts.append('<p class="warn">Histogram recorded in an unexpected shape; not shown.</p>')
            continue
        parts.append(charts.histogram(edges, counts, f"{clf}: {column}"))
        total = sum(counts)
        rows = [[f"{edges[i]:.2f} – {edges[i + 1]:.2f}", counts[i], _pct(counts[i], total)]
                for i in range(len(counts))]
        parts.append(f"<details><summary>bins</summary>{_table(['range', 'documents', 'share'], rows, [1, 2])}"
                     "</details>")
    return "".join(parts)


def _rejects(s: Mapping[str, Any], charts: ChartWriter) -> str:
    pairs = _counts(s.get("rejected_by_reason"))
    parts = ["<h2>Rejected records by reason</h2>"]
    if not pairs:
        rejected = _int(s.get("rejected_records"))
        note = "No records were rejected." if rejected == 0 else "No reject reasons recorded."
        return parts[0] + f'<p class="muted">{note}</p>'
    total = sum(c for _, c in pairs)
    parts.append(charts.bars([k for k, _ in pairs], [c for _, c in pairs], "rejected records by reason",
                             xlabel="records"))
    parts.append(_table(["reason", "records", "share"], [[k, c, _pct(c, total)] for k, c in pairs], [1, 2]))
    return "".join(parts)


def _environment(s: Mapping[str, Any]) -> str:
    versions = _dict(s.get("versions"))
    parts = ["<h2>Environment</h2>"]
    if versions:
        parts.append(_table(["package", "version"], sorted((str(k), _text(v)) for k, v in versions.items())))
    rapids = _dict(s.get("rapids"))
    if rapids:
        parts.append(_rapids(rapids))
    return "".join(parts) if len(parts) > 1 else ""


def _setting(value: Any) -> str:
    """A configuration value as a reader wants it: yes/no, "(not set)", the string itself."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, str) else json.dumps(value)


_RAPIDS_TITLES = {"settings": "Settings the check read", "warnings": "Warnings",
                  "gpu_operators": "Operators that ran on the GPU (from the executed plans)",
                  "cpu_operators": "Operators that ran on the CPU (from the executed plans)"}


def _rapids(rapids: Mapping[str, Any]) -> str:
    """The RAPIDS check as tables: its findings, then each group of settings as setting/value rows, then its
    warnings as a list (never a raw JSON dict)."""
    parts = ["<h3>RAPIDS Accelerator</h3>"]
    found = [(str(k), _setting(v)) for k, v in rapids.items() if not isinstance(v, (dict, list))]
    if found:
        parts.append(_table(["check", "result"], found))
    for key, value in rapids.items():
        title = _e(_RAPIDS_TITLES.get(key, key))
        if isinstance(value, dict):
            rows = sorted((str(k), _setting(v)) for k, v in value.items())
            parts.append(f"<h4>{title}</h4>" + (_table(["setting", "value"], rows) if rows else
                                                '<p class="muted">none</p>'))
        elif isinstance(value, list):
            items = "".join(f"<li>{_e(_setting(v))}</li>" for v in value)
            css = ' class="warn"' if key == "warnings" else ""
            parts.append(f"<h4>{title}</h4>" + (f'<ul{css}>{items}</ul>' if items else
                                                '<p class="muted">none</p>'))
    return "".join(parts)
