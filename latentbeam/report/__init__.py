"""Human-facing views: `latentbeam report` (static HTML + PNG) and `latentbeam info`.

Nothing here is on a scoring path: it reads bundles and scored output and draws them.
"""
from latentbeam.report.build import ReportResult, build_report
from latentbeam.report.info import bundle_summary, format_info

__all__ = ["ReportResult", "build_report", "bundle_summary", "format_info"]
