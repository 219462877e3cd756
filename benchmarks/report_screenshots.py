"""Screenshots of a benchmark's report.html as a browser shows it at a given window width (issue #10:
"every figure readable at 1020 px wide"), plus an automatic check for anything wider than the window.

    python benchmarks/report_screenshots.py runs/demo/report.html --out /tmp/report-shots --width 1020

``--top FILE`` also writes the first crop as a small palette PNG: the README's picture of the report is
``--crop 760 --top docs/img/report.png`` of the demo's report.

Needs Chromium (``chromium`` on the PATH, or ``--browser``). Writes ``page-NN.png`` crops of the whole
page (``--crop`` px tall each) to look at, and prints every table, figure, heading or paragraph whose
right edge is beyond the window (it would be cut off or need sideways scrolling) and every figure the
browser shows at another size than its PNG's (scaled, hence blurred or with shrunk text). Exit
status 1 when there is any. The report itself is not modified: the check runs on a copy with a
small script appended.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROBE = """<script>
addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const name = e => e.dataset.table || e.dataset.figure || e.tagName.toLowerCase();
  const wide = [...document.querySelectorAll('table, img, figure, p, h1, h2, pre')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => name(e) + ':' + Math.round(e.getBoundingClientRect().right) + 'px');
  const scaled = [...document.querySelectorAll('img')]
    .filter(e => e.naturalWidth !== e.width)
    .map(e => name(e) + ':' + e.naturalWidth + '->' + e.width + 'px');
  document.body.dataset.viewport = width;
  document.body.dataset.wide = wide.join(' ');
  document.body.dataset.scaled = scaled.join(' ');
  document.body.dataset.height = document.documentElement.scrollHeight;
});
</script>
"""


def chromium(browser: str, width: int, height: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a ``width × height`` window (no scroll bars)."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)


def probe(browser: str, report: Path, width: int) -> dict[str, str]:
    """The page's layout facts (``viewport``, ``wide``, ``scaled``, ``height``) at ``width`` px."""
    html = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        dom = chromium(browser, width, 800, "--dump-dom", copy.as_uri()).stdout
    body = re.search(r"<body([^>]*)>", dom)
    if body is None:
        raise SystemExit(f"{report}: the browser returned no <body>")
    return dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))


def screenshots(browser: str, report: Path, width: int, height: int, crop: int, out: Path) -> list[Path]:
    """The whole page at ``width`` px as crops of ``crop`` px, trailing blank space dropped."""
    full = out / "page-full.png"
    chromium(browser, width, height, f"--screenshot={full}", report.resolve().as_uri())
    with Image.open(full) as shot:
        pixels = np.asarray(shot.convert("L"))
        used = np.flatnonzero((pixels < 250).any(axis=1))
        bottom = min(pixels.shape[0], int(used.max()) + 20) if used.size else pixels.shape[0]
        paths = []
        for k, top in enumerate(range(0, bottom, crop)):
            path = out / f"page-{k:02d}.png"
            shot.crop((0, top, width, min(top + crop, bottom))).save(path)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a benchmark's report.html")
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    parser.add_argument("--width", type=int, default=1020, help="browser window width in px (default 1020)")
    parser.add_argument("--crop", type=int, default=1100, help="height of each screenshot crop in px")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--top", type=Path, help="also write the first crop here as a 64-colour PNG (small enough to commit)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    facts = probe(args.browser, args.report, args.width)
    height = int(facts.get("height", "20000")) + 50
    paths = screenshots(args.browser, args.report, args.width, height, args.crop, args.out)
    print(f"{args.report}: {facts.get('height')} px tall at {facts.get('viewport')} px wide; {len(paths)} crops in {args.out}")
    if args.top:
        with Image.open(paths[0]) as first:
            first.convert("RGB").quantize(colors=64).save(args.top, optimize=True)
        print(f"  the first crop: {args.top} ({args.top.stat().st_size // 1024} KiB)")
    wide, scaled = facts.get("wide", "").split(), facts.get("scaled", "").split()
    for item in wide:
        print(f"  wider than the window: {item}")
    for item in scaled:
        print(f"  figure shown at another size than drawn: {item}")
    if not wide and not scaled:
        print("  nothing wider than the window; every figure shown at the size it was drawn")
    sys.exit(1 if wide or scaled else 0)


if __name__ == "__main__":
    main()
