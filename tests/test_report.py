"""HTML report: numbers shown, hostile strings escaped, offline, and renders in a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sparkcurate.report import build_report, load_summary
from sparkcurate.report import charts as charts_mod

HOSTILE_FILE = "evil/<script>alert(1)</script>.jsonl"
HOSTILE_LABEL = '<img src=x onerror="alert(2)">'


def sample_summary(n_files: int = 3) -> dict:
    """A realistic summary (schema of sparkcurate.report.summary) with hostile names in it."""
    edges = [round(i * 0.05, 2) for i in range(21)]
    by_file = {
        HOSTILE_FILE: {"input": 500, "output": 300, "filtered": 190, "rejected": 10,
                       "labels": {"domain": {"News": 200, "Sports": 100, HOSTILE_LABEL: 190}}},
        "a/part2.jsonl": {"input": 500, "output": 300, "filtered": 190, "rejected": 10,
                          "labels": {"domain": {"News": 100, "Sports": 180, "Finance": 210}}},
    }
    for i in range(n_files - 2):
        by_file[f"bulk/part-{i:04d}.jsonl"] = {"input": 1, "output": 0, "filtered": 1, "rejected": 0,
                                               "labels": {"domain": {"Finance": 1}}}
    return {
        "status": "succeeded",
        "started_at": "2026-11-26T14:00:00Z", "finished_at": "2026-11-26T14:00:12Z", "elapsed_s": 12.3,
        "input": "/data/in", "output": "/data/out",
        "command": "sparkcurate classify --input /data/in --output /data/out --classifier domain",
        "input_records": 1000, "output_records": 600, "filtered_records": 380, "rejected_records": 20,
        "rejected_by_reason": {"malformed_json": 5, "text_missing": 3, "text_empty": 12},
        "classifiers": [{"name": "domain", "model": "nvidia/domain-classifier", "revision": None,
                         "pred_column": "domain_pred", "prob_column": None, "filter_by": ["News"]}],
        "by_label": {"domain": {"News": 300, "Sports": 280, "Finance": 210, HOSTILE_LABEL: 190}},
        "by_file": by_file,
        "prob_histograms": {"domain": {"column": "domain_prob_max", "edges": edges,
                                       "counts": [0] * 5 + [3, 7, 12, 20, 31, 40, 52, 60, 75, 90, 100, 110,
                                                            120, 130, 200]}},
        "docs_per_s": 81.3, "classify_s": 8.25, "classify_docs_per_s": 119.0, "devices": ["cpu"],
        "input_splits": {"slots": 2, "waves_asked": 4, "waves": 1, "tasks": 2, "input_bytes": 7749,
                         "task_bytes": 3874, "split_bytes": 3358543, "min_partitions": 2,
                         "waves_reason": "the input (7.6 KB) is too small for 4 tasks per slot"},
        "models": [{"classifier": "domain", "model": "nvidia/domain-classifier", "revision": None,
                    "sha256": "ab" * 32}],
        "versions": {"sparkcurate": "0.1.0", "pyspark": "4.3.0", "torch": "2.13.0", "transformers": "4.57.0"},
        "rapids": {"enabled": False},
    }


WIDE_LABELS = ["Food_and_Drink", "Computers_and_Electronics", "Finance", "Science", "Sports",
               "Travel_and_Transportation", "Arts_and_Entertainment", "Autos_and_Vehicles", "Beauty_and_Fitness",
               "Books_and_Literature", "Business_and_Industrial", "Law_and_Government"]


def wide_summary() -> dict:
    """The README run's shape: a dozen labels in two files (a per-file table wider than the page, a ten-entry
    legend), a long path, the input splits' reason and the RAPIDS check's settings and warnings."""
    summary = sample_summary()
    files = {"crawl-a/part-000.jsonl": 0, "s3a://crawl-bucket/2026/11/shard-00042/part-000.jsonl": 1}
    for name, shift in files.items():
        labels = {label: 1 + (i + shift) % 3 for i, label in enumerate(WIDE_LABELS)}
        summary["by_file"][name] = {"input": 30, "output": 25, "filtered": 0, "rejected": 5,
                                    "labels": {"domain": labels}}
        for label, n in labels.items():
            summary["by_label"]["domain"][label] = summary["by_label"]["domain"].get(label, 0) + n
    summary["input_splits"]["waves_reason"] = (
        "the input (7.6 KB) is too small for 4 tasks per slot of at least 16.0 MB each: 2 task(s) for 2 slot(s)")
    summary["rapids"] = {"enabled": False, "configured": True, "class_loadable": "unknown",
                         "settings": {"spark.plugins": "com.nvidia.spark.SQLPlugin",
                                      "spark.rapids.sql.concurrentGpuTasks": "2",
                                      "spark.rapids.memory.gpu.allocFraction": None},
                         "warnings": ["spark.rapids.memory.gpu.allocFraction is not set: RAPIDS takes most of "
                                      "the GPU's memory and leaves PyTorch little"],
                         "gpu_operators": ["GpuFileGpuScan json", "GpuFilter"],
                         "cpu_operators": ["Execute InsertIntoHadoopFsRelationCommand"], "queries": 3}
    return summary


def write_summary(out: Path, summary: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return out


def test_report_shows_numbers_and_escapes_hostile_names(tmp_path):
    out = write_summary(tmp_path / "out", sample_summary())
    index = build_report(out)
    assert index == out / "_report" / "index.html"
    page = index.read_text(encoding="utf-8")
    equation = re.search(r'<div class="eq" id="equation">(.*?)</div>', page).group(1)
    assert re.sub(r"<[^>]+>", "", equation) == "1,000 input = 600 output + 380 filtered + 20 rejected"
    assert "does not add up" not in page
    for text in ("81.3", "12.3s", "8.2s", "119", "classify_docs_per_s", "7,749", "3,874",
                 "1 planned, 4 asked: the input (7.6 KB) is too small", "nvidia/domain-classifier", "(not pinned)", "ab" * 32, "4.3.0",
                 "malformed_json", "text_empty", "domain_prob_max", "News", "300"):
        assert text in page, text
    # Hostile strings appear only escaped.
    assert "<script>alert" not in page and 'onerror="alert' not in page
    assert "evil/&lt;script&gt;alert(1)&lt;/script&gt;.jsonl" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    # Offline: no network URLs referenced anywhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page


def test_report_charts_are_local_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    out = write_summary(tmp_path / "out", sample_summary())
    page = build_report(out).read_text(encoding="utf-8")
    srcs = re.findall(r'<img class="chart" src="([^"]+)"', page)
    # labels bar + per-file stacked + histogram + rejects bar
    assert len(srcs) == 4, srcs
    for src in srcs:
        png = out / "_report" / src
        assert "/" not in src and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 2000


def test_rebuild_removes_stale_charts(tmp_path):
    pytest.importorskip("matplotlib")
    out = write_summary(tmp_path / "out", sample_summary())
    stale = out / "_report" / "chart-99-bars.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    build_report(out)
    assert not stale.exists()


def test_many_files_shows_top_n_and_says_how_many_omitted(tmp_path):
    out = write_summary(tmp_path / "out", sample_summary(n_files=250))
    page = build_report(out, max_files=10).read_text(encoding="utf-8")
    assert "Showing the 10 largest of 250 files (by input records); 240 files omitted." in page
    assert "a/part2.jsonl" in page  # among the largest
    assert "bulk/part-0247.jsonl" not in page


def test_svg_fallback_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setattr(charts_mod, "matplotlib_available", lambda: False)
    out = write_summary(tmp_path / "out", sample_summary())
    page = build_report(out).read_text(encoding="utf-8")
    assert "<img" not in page
    assert page.count('<svg class="chart"') == 3  # labels, histogram, rejects (stacked -> table only)
    assert not list((out / "_report").glob("*.png"))
    assert "<script>alert" not in page and "&lt;img src=x" in page


def test_rapids_settings_are_a_table_not_json(tmp_path):
    page = build_report(write_summary(tmp_path / "out", wide_summary())).read_text(encoding="utf-8")
    rapids = page[page.index("RAPIDS Accelerator"):]
    assert re.search(r"<td[^>]*>configured</td><td[^>]*>yes</td>", rapids)
    assert re.search(r"<td[^>]*>class_loadable</td><td[^>]*>unknown</td>", rapids)
    assert re.search(r"<td[^>]*>spark\.plugins</td><td[^>]*>com\.nvidia\.spark\.SQLPlugin</td>", rapids)
    assert re.search(r"<td[^>]*>spark\.rapids\.memory\.gpu\.allocFraction</td><td[^>]*>\(not set\)</td>", rapids)
    assert "<li>spark.rapids.memory.gpu.allocFraction is not set" in rapids
    gpu = rapids[rapids.index("Operators that ran on the GPU"):rapids.index("Operators that ran on the CPU")]
    assert "<ul><li>GpuFileGpuScan json</li><li>GpuFilter</li></ul>" in gpu  # a plain list, not a warning
    assert "<li>Execute InsertIntoHadoopFsRelationCommand</li>" in rapids[rapids.index("on the CPU"):]
    assert "{&quot;" not in page and "[&quot;" not in page  # no raw JSON anywhere


def test_charts_keep_their_text_inside_and_apart(tmp_path):
    """No chart text cut off by the image's edge or drawn over other text or a legend key (the stacked
    chart's "100" lay under its legend at ten entries)."""
    pytest.importorskip("matplotlib")
    from sparkcurate.report.html import render_html

    for summary in (sample_summary(), wide_summary()):
        charts = charts_mod.ChartWriter(tmp_path)
        render_html(summary, charts)
        assert len(charts.files) == 4
        assert charts.layout_problems == []


def test_missing_optional_keys_and_unbalanced_counts(tmp_path):
    summary = {"status": "failed", "input_records": 10, "output_records": 3, "filtered_records": 3,
               "rejected_records": 0, "error": "OutOfMemoryError <boom>"}
    out = write_summary(tmp_path / "out", summary)
    page = build_report(out).read_text(encoding="utf-8")
    assert "failed" in page and "OutOfMemoryError &lt;boom&gt;" in page
    assert "The counts do not add up: output + filtered + rejected = 6, 4 fewer than the input records." in page
    assert "No label counts recorded." in page and "No records were rejected." in page


def test_malformed_histogram_is_reported_not_crashing(tmp_path):
    summary = sample_summary()
    summary["prob_histograms"]["domain"]["counts"] = [1, 2]
    out = write_summary(tmp_path / "out", summary)
    assert "unexpected shape" in build_report(out).read_text(encoding="utf-8")


def test_missing_summary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run summary _summary\.json in .*finished sparkcurate run"):
        build_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nope")


def test_bad_summary_json_is_a_clear_error(tmp_path):
    (tmp_path / "_summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_summary(tmp_path)
    (tmp_path / "_summary.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        load_summary(tmp_path)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg
    import numpy as np

    out = write_summary(tmp_path / "out", sample_summary())
    url = build_report(out).resolve().as_uri()
    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "profile1")
    assert shot.is_file(), f"no screenshot; rc={proc.returncode} stderr={proc.stderr[-2000:]}"
    pixels = mpimg.imread(shot)[..., :3]
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50, "screenshot looks blank"
    assert (pixels < 0.99).any(axis=-1).mean() > 0.02, "screenshot is almost all white"
    # The bars' blue (#1f77b4) only exists inside the chart PNGs: proves the images loaded.
    blue = (np.abs(pixels * 255 - np.array([31, 119, 180])) < 12).all(axis=-1).sum()
    assert blue > 2000, f"chart images did not render ({blue} bar-coloured pixels)"

    proc = _chromium(["--dump-dom", url], tmp_path / "profile2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert len(re.findall(r'<img class="chart" src="chart-\d+-\w+\.png"', dom)) == 4
    assert "1,000" in dom and "<script>alert" not in dom


# Injected into a copy of the page (the report itself runs no script; its CSP forbids one): for every
# rendered table cell, the words (whitespace-separated, up to the page's LONG_WORD) that are wider than the
# cell or drawn across two lines; for every inline SVG chart, text outside the SVG's box; and whether the page
# is wider than the window.
MEASURE_JS = r"""
<script>
(function () {
  const ctx = document.createElement('canvas').getContext('2d');
  const problems = [];
  for (const cell of document.querySelectorAll('td, th')) {
    if (!cell.getClientRects().length) continue;  // not rendered (a closed <details>)
    const style = getComputedStyle(cell);
    const width = cell.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      ctx.font = getComputedStyle(node.parentElement).font;
      const re = /\S+/g;
      let m;
      while ((m = re.exec(node.data)) !== null) {
        const word = m[0];
        if (word.length > %(long)d) continue;
        const px = ctx.measureText(word).width;
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + word.length);
        const tops = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
        if (px > width + 1) problems.push('cell narrower than its word ' + JSON.stringify(word) + ': ' +
                                          Math.round(width) + ' < ' + Math.round(px) + ' px');
        else if (tops.size > 1) problems.push('word broken across lines: ' + JSON.stringify(word));
      }
    }
  }
  for (const svg of document.querySelectorAll('svg')) {
    const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
    for (const t of svg.querySelectorAll('text')) {
      const b = t.getBBox();
      if (b.x < -1 || b.y < -1 || b.x + b.width > w + 1 || b.y + b.height > h + 1)
        problems.push('chart text cut off: ' + JSON.stringify(t.textContent.slice(0, 60)));
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth)
    problems.push('page wider than the window: ' + document.documentElement.scrollWidth + ' px');
  const out = document.createElement('pre');
  out.id = 'layout-problems';
  out.textContent = JSON.stringify(problems);
  document.body.appendChild(out);
})();
</script>
"""


def _layout_problems(index: Path, profile: Path, width: int = 1280) -> list[str]:
    """What MEASURE_JS finds in the report at ``index`` rendered by headless chromium ``width`` px wide."""
    from sparkcurate.report.html import LONG_WORD

    page = index.read_text(encoding="utf-8")
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe = index.with_name("measure.html")
    probe.write_text(page.replace("</body>", (MEASURE_JS % {"long": LONG_WORD}) + "</body>"), encoding="utf-8")
    proc = _chromium(["--dump-dom", f"--window-size={width},2000", probe.resolve().as_uri()], profile)
    found = re.search(r'<pre id="layout-problems">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the measuring script did not run; rc={proc.returncode} stderr={proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
@pytest.mark.parametrize("charts", ["png", "svg"])
def test_report_layout_at_1280px_in_chromium(tmp_path, monkeypatch, charts):
    """At 1280 px: no table cell narrower than its longest word or breaking a word (file names squeezed to 3
    characters a line, the command wrapped mid-word), no SVG chart text cut off, nothing wider than the page."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    if charts == "png":
        pytest.importorskip("matplotlib")
    else:
        monkeypatch.setattr(charts_mod, "matplotlib_available", lambda: False)
    summary = wide_summary()
    summary["command"] = ("sparkcurate classify --input s3a://crawl-bucket/2026/11/ --output "
                          "s3a://curated-bucket/2026/11/domain/ --classifier zero-shot --master 'local[2]' "
                          "--conf spark.sql.shuffle.partitions=64 --conf spark.executor.memory=8g")
    index = build_report(write_summary(tmp_path / "out", summary))
    assert _layout_problems(index, tmp_path / "profile") == []


def test_awkward_labels_do_not_break_charts(tmp_path):
    """mathtext-like, empty, control-character and very long labels/file names still render."""
    pytest.importorskip("matplotlib")
    summary = sample_summary()
    weird = {"$\\frac{1": 5, "": 2, "tab\there\nnewline": 3, "x" * 500: 1, "50% _under_ ^hat": 4}
    summary["by_label"]["domain"].update(weird)
    summary["by_file"]["f" * 400 + ".jsonl"] = {"input": 9999, "labels": {"domain": weird}}
    summary["rejected_by_reason"]["$$"] = 1
    out = write_summary(tmp_path / "out", summary)
    page = build_report(out).read_text(encoding="utf-8")
    assert "$\\frac{1" in page and "x" * 500 in page
    assert len(list((out / "_report").glob("chart-*.png"))) == 4


def test_matplotlib_preloaded_on_a_thread_in_a_fresh_interpreter():
    """What the charts import is imported by the thread the pipeline starts during the classify job."""
    import json
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    code = ("import json, sys\n"
            "from sparkcurate.report.charts import preload_matplotlib\n"
            "before = 'matplotlib.backends.backend_agg' in sys.modules\n"
            "thread = preload_matplotlib(); thread.join(120)\n"
            "print(json.dumps([before, thread.is_alive(), 'matplotlib.backends.backend_agg' in sys.modules,"
            " 'matplotlib.figure' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, False, True, True]
