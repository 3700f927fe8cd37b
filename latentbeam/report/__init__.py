"""Human-facing views: `latentbeam report` (static HTML + PNG) and `latentbeam info`.

Nothing here is on a scoring path: it reads bundles and scored output and draws them.
Attributes are imported on first use, so `latentbeam info` loads neither matplotlib nor
TensorFlow.
"""
from __future__ import annotations

_EXPORTS = {"ReportResult": "latentbeam.report.build", "build_report": "latentbeam.report.build",
            "bundle_summary": "latentbeam.report.info", "format_info": "latentbeam.report.info"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latentbeam.report' has no attribute {name!r}")
