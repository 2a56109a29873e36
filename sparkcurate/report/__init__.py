"""Seeing a run: the driver-side progress line while it runs, its counts and ``_summary.json`` (``summary``,
imported by the job, not here) and the HTML report afterwards.

All are cheap to import: matplotlib is only imported when a report is built, pyspark only when counting.
"""

from .html import build_report, load_summary
from .progress import ProgressReporter, format_duration, format_progress

__all__ = ["ProgressReporter", "build_report", "format_duration", "format_progress", "load_summary"]
