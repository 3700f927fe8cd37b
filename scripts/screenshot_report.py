"""Screenshot of a latentbeam report, rendered by headless Chromium (no network, from disk).

    .venv/bin/python scripts/screenshot_report.py build/demo/report/index.html \
        --output build/demo/report-screenshot.png [--width 1400] [--height 6000]

Finds `chromium` (Debian's package), `chromium-browser`, `google-chrome` or
`google-chrome-stable` on PATH (or $CHROMIUM). Prints the screenshot's path.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    """Path of a Chromium binary, or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit and shutil.which(explicit):
        return shutil.which(explicit)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(index_html: str, output: str, *, width: int = 1400, height: int = 6000,
               timeout: float = 120.0) -> str:
    """Renders `index_html` with headless Chromium and writes a PNG screenshot to `output`.

    Raises:
      FileNotFoundError: no Chromium binary, or no such page.
      RuntimeError: Chromium failed or wrote no screenshot (its stderr is included).
    """
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("No Chromium found on PATH (looked for "
                                f"{', '.join(CANDIDATES)}; or set $CHROMIUM). On Debian/Ubuntu: "
                                "apt-get install -y chromium")
    page = os.path.abspath(index_html)
    if not os.path.isfile(page):
        raise FileNotFoundError(f"No report page at {page}; build it with `latentbeam report`.")
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    if os.path.exists(output):
        os.remove(output)
    with tempfile.TemporaryDirectory(prefix="latentbeam-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={output}", "file://" + page]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not os.path.exists(output):
        raise RuntimeError(f"Chromium exited with {proc.returncode} and wrote no screenshot "
                           f"to {output}. stderr:\n{proc.stderr[-2000:]}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index_html", help="the report's index.html")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args(argv)
    print(screenshot(args.index_html, args.output, width=args.width, height=args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
