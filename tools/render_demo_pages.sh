#!/usr/bin/env bash
# Render the fixture audit (realistic sizes) to HTML + PDF, time it, and rasterise its first two pages side
# by side into docs/images/report_pages.png for the README. Needs pdftoppm (Debian: poppler-utils).
# Usage: tools/render_demo_pages.sh [OUT_DIR]   (default: out/report_demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-out/report_demo}
command -v pdftoppm >/dev/null || { echo "pdftoppm not found: apt-get install -y poppler-utils" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT" docs/images
PYTHONPATH=tests "$PY" - "$OUT" <<'PYEOF'
import sys, time
from fixtures.make_audit_fixture import write_audit_fixture
from reports import render_report

path = write_audit_fixture(sys.argv[1], image_size=(208, 176), per_class=4)
start = time.perf_counter()
written = render_report(path)
print(f"rendered in {time.perf_counter() - start:.1f} s: "
      + ", ".join(f"{p} ({p.stat().st_size / 1e6:.2f} MB)" for p in written.values()))
PYEOF
pdftoppm -r 80 -png -f 1 -l 2 "$OUT/report.pdf" "$OUT/page"
"$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image

pages = [Image.open(p).convert("RGB") for p in sorted(Path(sys.argv[1]).glob("page-*.png"))]
sheet = Image.new("RGB", (sum(p.width for p in pages) + 12 * (len(pages) + 1), max(p.height for p in pages) + 24), "#888")
x = 12
for page in pages:
    sheet.paste(page, (x, 12))
    x += page.width + 12
sheet.save("docs/images/report_pages.png", optimize=True)
print("wrote docs/images/report_pages.png", sheet.size)
PYEOF
