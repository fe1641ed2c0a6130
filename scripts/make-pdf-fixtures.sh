#!/usr/bin/env bash
# Makes the PDFs of tests/fixtures/pdf/. The good document comes from cairo (Debian's
# python3-cairo); the others are derived from it with qpdf (Debian's qpdf) and coreutils:
#   three-pages.pdf  3 US-letter pages of text and a filled box (cairo)
#   encrypted.pdf    the same, AES-256 encrypted, user password "secret"
#   truncated.pdf    its first 6000 bytes
#   zero-pages.pdf   a valid PDF with an empty page tree
#   huge-page.pdf    one 14400x14400 pt page (28800x28800 pixels at 144 dpi)
#   three-pages-p1-72dpi-pdftoppm.png  page 1 as poppler renders it (Debian's poppler-utils),
#                    what the tests compare dsocr's rendering with
# The tests use the committed files; run this only to remake them.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/fixtures/pdf"
mkdir -p "$dir"
cd "$dir"
if [ "${1:-}" = "--with-cairo" ]; then
    /usr/bin/python3 - <<'PY'
import cairo
s = cairo.PDFSurface("three-pages.pdf", 612, 792)
c = cairo.Context(s)
c.select_font_face("DejaVu Sans")
for p in range(1, 4):
    c.set_source_rgb(0, 0, 0)
    c.set_font_size(24); c.move_to(72, 100); c.show_text("Page %d of a test document" % p)
    c.set_font_size(12)
    for i in range(12):
        c.move_to(72, 150 + i * 20)
        c.show_text("Line %d on page %d: the quick brown fox jumps over the lazy dog." % (i + 1, p))
    c.set_source_rgb(0.1, 0.3, 0.7); c.rectangle(72, 420 + 40 * p, 200, 80); c.fill()
    s.show_page()
s.finish()
PY
fi
qpdf --encrypt secret secret 256 -- three-pages.pdf encrypted.pdf
pdftoppm -r 72 -f 1 -l 1 -png -singlefile three-pages.pdf three-pages-p1-72dpi-pdftoppm
head -c 6000 three-pages.pdf > truncated.pdf
qpdf --empty zero-pages.pdf
tmp="$(mktemp)"
printf '%s\n' '%PDF-1.4' \
    '1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj' \
    '2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj' \
    '3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] >> endobj' \
    'trailer << /Root 1 0 R >>' '%%EOF' > "$tmp"
# qpdf rebuilds the cross-reference table the hand-written file lacks (and says so).
qpdf "$tmp" huge-page.pdf || [ $? -eq 3 ]
rm -f "$tmp"
ls -l "$dir"
