"""Bar charts for the run report: matplotlib PNGs when available, inline SVG otherwise.

The report must open fully offline, so charts are either PNG files written beside
``index.html`` (matplotlib, Agg canvas, no pyplot global state) or SVG drawn here by hand
and inlined in the page. matplotlib is an optional dependency (``sparkcurate[report]``):
without it simple bars and histograms are still drawn as SVG, and the per-file stacked
charts are left out (the tables below them carry the same numbers).

Every string that reaches a chart comes from run data (labels, file names) and may be
hostile: SVG text is HTML-escaped here, and matplotlib's mathtext parsing is switched off
so a label such as ``$\\frac`` cannot break rendering.
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

# Colour-blind friendly-ish palette (matplotlib's tab10), fixed so SVG and PNG agree.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
OTHER_COLOUR = "#c7c7c7"
MAX_TICK_CHARS = 40


def matplotlib_available() -> bool:
    """True when matplotlib can be imported; checked at call time so tests can fake its absence."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def preload_matplotlib() -> threading.Thread | None:
    """Import what the PNG charts need on a daemon thread; None when matplotlib is not installed.

    Why: the import is most of a report's time (0.7 s of ~1 s here) and came after the job's last Spark step;
    the pipeline starts it while the driver only waits for the classify job."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None

    def load() -> None:
        try:
            from matplotlib import figure  # noqa: F401
            from matplotlib.backends import backend_agg  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - the report imports it again and says what is wrong
            logger.debug("preloading matplotlib: %s", exc)

    thread = threading.Thread(target=load, name="sparkcurate-report-preload", daemon=True)
    thread.start()
    return thread


def shorten(text: str, limit: int = MAX_TICK_CHARS) -> str:
    """Cut long labels/file names for axis ticks (tables show them in full)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


@dataclass
class ChartWriter:
    """Writes the charts of one report into ``report_dir`` and returns HTML snippets.

    ``use_matplotlib=None`` means "use it if installed". File names are generated from a
    counter, never from data, so hostile labels cannot choose where files are written.
    """

    report_dir: Path
    use_matplotlib: bool | None = None

    def __post_init__(self) -> None:
        if self.use_matplotlib is None:
            self.use_matplotlib = matplotlib_available()
        self._count = 0
        self.files: list[Path] = []
        self.layout_problems: list[str] = []  # text cut off or drawn over (layout_problems), per chart

    def _next_name(self, kind: str) -> str:
        self._count += 1
        return f"chart-{self._count:02d}-{kind}.png"

    # ---- public chart kinds -------------------------------------------------------------

    def bars(self, labels: Sequence[str], values: Sequence[float], title: str,
             xlabel: str = "documents") -> str:
        """Horizontal bar chart (one bar per label); largest first is the caller's choice."""
        if not labels:
            return ""
        if self.use_matplotlib:
            return self._png_bars(labels, values, title, xlabel)
        return svg_bars(labels, values, title)

    def histogram(self, edges: Sequence[float], counts: Sequence[int], title: str) -> str:
        """Vertical histogram of probabilities from precomputed ``edges`` (len = counts + 1)."""
        if not counts or len(edges) != len(counts) + 1:
            return ""
        if self.use_matplotlib:
            return self._png_histogram(edges, counts, title)
        names = [f"{edges[i]:.2f}–{edges[i + 1]:.2f}" for i in range(len(counts))]
        return svg_bars(names, counts, title)

    def stacked(self, rows: Sequence[str], series: Sequence[str],
                matrix: Sequence[Sequence[float]], title: str) -> str:
        """Horizontal 100% stacked bars: one bar per row (file), one segment per series (label).

        Only drawn with matplotlib; the SVG fallback relies on the table under it.
        """
        if not rows or not series or not self.use_matplotlib:
            return ""
        return self._png_stacked(rows, series, matrix, title)

    # ---- matplotlib ---------------------------------------------------------------------

    def _figure(self, height_in: float, width_in: float = 9.0, layout: str | None = None):
        """A standalone Figure on an Agg canvas: no pyplot, no global backend switch. ``layout="constrained"``
        for a figure with a legend outside its axes (tight_layout would let the axes' labels run under it)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width_in, max(2.2, height_in)), dpi=100, layout=layout)
        FigureCanvasAgg(fig)
        return fig

    def _save(self, fig, kind: str, title: str) -> str:
        import matplotlib

        name = self._next_name(kind)
        path = self.report_dir / name
        with matplotlib.rc_context({"text.parse_math": False}):
            if fig.get_layout_engine() is None:
                fig.tight_layout()
            problems = layout_problems(fig)
            fig.savefig(path, format="png")
        if problems:  # the chart is still written: its table beside it has the numbers
            logger.warning("chart %s (%s): %s", name, title, "; ".join(problems))
            self.layout_problems += [f"{name}: {p}" for p in problems]
        self.files.append(path)
        alt = html.escape(title, quote=True)
        return f'<img class="chart" src="{name}" alt="{alt}" loading="lazy">'

    def _png_bars(self, labels, values, title, xlabel) -> str:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            fig = self._figure(0.6 + 0.28 * len(labels))
            ax = fig.add_subplot(1, 1, 1)
            ys = list(range(len(labels)))
            ax.barh(ys, list(values), color=PALETTE[0])
            ax.set_yticks(ys, [shorten(x) for x in labels])
            ax.invert_yaxis()
            ax.set_xlabel(xlabel)
            ax.set_title(shorten(title, 80))
            top = max(values) if values else 0
            for y, v in zip(ys, values):
                ax.text(v + top * 0.01, y, f"{v:,.0f}", va="center", fontsize=8)
            ax.set_xlim(0, top * 1.12 if top else 1)
            return self._save(fig, "bars", title)

    def _png_histogram(self, edges, counts, title) -> str:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            fig = self._figure(3.2)
            ax = fig.add_subplot(1, 1, 1)
            widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
            ax.bar(list(edges[:-1]), list(counts), width=widths, align="edge",
                   color=PALETTE[2], edgecolor="white")
            ax.set_xlabel("probability")
            ax.set_ylabel("documents")
            ax.set_title(shorten(title, 80))
            return self._save(fig, "hist", title)

    def _png_stacked(self, rows, series, matrix, title) -> str:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            fig = self._figure(1.2 + 0.3 * max(len(rows), 0.6 * len(series)), width_in=11.0, layout="constrained")
            ax = fig.add_subplot(1, 1, 1)
            ys = list(range(len(rows)))
            left = [0.0] * len(rows)
            # Shares, not counts: a small file's label mix must be as visible as a big one's.
            totals = [float(sum(r)) or 1.0 for r in matrix]
            for j, name in enumerate(series):
                widths = [100.0 * float(matrix[i][j]) / totals[i] for i in range(len(rows))]
                colour = OTHER_COLOUR if name == OTHER else PALETTE[j % len(PALETTE)]
                ax.barh(ys, widths, left=left, color=colour, label=shorten(name, 30))
                left = [a + b for a, b in zip(left, widths)]
            ax.set_yticks(ys, [shorten(r) for r in rows])
            ax.invert_yaxis()
            ax.set_xlim(0, 100)
            ax.set_xlabel("% of the file's classified documents")
            ax.set_title(shorten(title, 80))
            # Beside the axes, in space of its own: anchored on the axes' edge it covered the "100" under it.
            fig.legend(loc="outside right center", fontsize=8, frameon=False)
            return self._save(fig, "stacked", title)


OTHER = "(other)"


def layout_problems(fig) -> list[str]:
    """Text of ``fig`` that is cut off by the figure's edge or drawn over other text or a legend key, as
    readable descriptions (empty: the chart is legible). The report logs them; the tests require none."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = Bbox.from_bounds(0, 0, fig.bbox.width, fig.bbox.height)
    texts, keys = [], []
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            texts += [t.label1 for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi]
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    for legend in [*(ax.get_legend() for ax in fig.axes), *fig.legends]:
        if legend is not None:
            texts += legend.get_texts()
            keys += [h for h in legend.legend_handles if h is not None]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    problems = []
    for name, box in boxes:
        if box.x0 < page.x0 - 1 or box.y0 < page.y0 - 1 or box.x1 > page.x1 + 1 or box.y1 > page.y1 + 1:
            problems.append(f"{name!r} is cut off by the chart's edge")
    for i, (name, box) in enumerate(boxes):
        for other, obox in boxes[i + 1:]:
            if _overlap(box, obox):
                problems.append(f"{name!r} overlaps {other!r}")
        for key in keys:
            if _overlap(box, key.get_window_extent(renderer)):
                problems.append(f"{name!r} is under a legend key")
    return problems


def _overlap(a, b, tolerance: float = 1.0) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


def svg_bars(labels: Sequence[str], values: Sequence[float], title: str) -> str:
    """Inline SVG horizontal bars; used when matplotlib is not installed."""
    bar_h, gap, label_w, chart_w = 16, 6, 260, 420
    top = max((float(v) for v in values), default=0.0) or 1.0
    height = 28 + len(labels) * (bar_h + gap)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{label_w + chart_w + 90}" '
        f'height="{height}" role="img" aria-label="{html.escape(title, quote=True)}">',
        f'<text x="0" y="16" font-size="13" font-weight="bold">{html.escape(shorten(title, 80))}</text>',
    ]
    for i, (name, value) in enumerate(zip(labels, values)):
        y = 28 + i * (bar_h + gap)
        width = max(1.0, chart_w * float(value) / top) if value else 0.0
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 4}" font-size="11" text-anchor="end">'
            f"{html.escape(shorten(name))}</text>"
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="{PALETTE[0]}"/>'
            f'<text x="{label_w + width + 4:.1f}" y="{y + bar_h - 4}" font-size="11">{float(value):,.0f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
