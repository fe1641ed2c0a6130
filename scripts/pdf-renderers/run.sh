#!/usr/bin/env bash
# The PDF renderer comparison of BENCHMARKS.md: real PDFs from Debian packages and from the
# producers themselves, rendered at 144 dpi by poppler's pdftoppm (reference), hayro and PDFium.
#
#   scripts/pdf-renderers/run.sh
#
# Installs (Debian): poppler-utils, ghostscript, groff, libreoffice-writer-nogui,
# fonts-wqy-microhei, python3-cairo, python3-pil, python3-numpy, img2pdf; downloads (apt) the doc
# packages asymptote-doc, gnuplot-doc, python-reportlab-doc and (PyPI) the pypdfium2 wheel.
set -euo pipefail
cd "$(dirname "$0")"
apt-get install -y -qq --no-install-recommends poppler-utils ghostscript libreoffice-writer-nogui \
    fonts-wqy-microhei python3-cairo python3-pil python3-numpy img2pdf groff >/dev/null
mkdir -p work/set work/deb
(cd work/deb && apt-get download asymptote-doc gnuplot-doc python-reportlab-doc >/dev/null 2>&1 \
    && for d in *.deb; do dpkg-deb -x "$d" x; done)
X=work/deb/x/usr/share/doc
cp "$X/gnuplot/gnuplot.pdf" work/set/pdftex-latex-gnuplot.pdf
cp "$X/asymptote/asyRefCard.pdf" work/set/pdftex-asy-refcard.pdf
cp "$X/asymptote/examples/pixel.pdf" work/set/gs814-imagemagick-pixel.pdf
cp "$X/python-reportlab-doc/reportlab-userguide.pdf" work/set/reportlab-userguide.pdf
# Shipped by Debian base packages and a crate (cairo): present on this machine.
cp /usr/share/doc/libtasn1-doc/libtasn1.pdf work/set/pdftex-texinfo-libtasn1.pdf 2>/dev/null \
    || { apt-get install -y -qq libtasn1-doc >/dev/null; cp /usr/share/doc/libtasn1-doc/libtasn1.pdf work/set/pdftex-texinfo-libtasn1.pdf; }
cp /usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf work/set/pdftex-latex-shared-mime-info.pdf
qoi="$(ls ~/.cargo/registry/src/*/qoi-0.4.1/doc/qoi-specification.pdf 2>/dev/null | head -1)"
[ -n "$qoi" ] || { cargo fetch --manifest-path Cargo.toml >/dev/null; qoi="$(ls ~/.cargo/registry/src/*/qoi-0.4.1/doc/qoi-specification.pdf | head -1)"; }
cp "$qoi" work/set/cairo-qoi-spec.pdf
# Made here by the producers themselves.
zcat /usr/share/man/man1/bash.1.gz | groff -man -Tps > work/bash.ps && ps2pdf work/bash.ps work/set/gs-bash-man.pdf
soffice --headless --convert-to pdf:writer_pdf_Export --outdir work libreoffice-report.html >/dev/null 2>&1
cp work/libreoffice-report.pdf work/set/libreoffice-report.pdf
/usr/bin/python3 make_cjk.py
pdftoppm -r 150 -f 20 -l 21 -gray work/set/pdftex-latex-gnuplot.pdf work/scan
/usr/bin/python3 make_scan.py >/dev/null
img2pdf --output work/set/scanned-jpeg.pdf work/scan-0.jpg work/scan-1.jpg
# PDFium from the pypdfium2 wheel (not installed: only its libpdfium.so is used).
python3 -m pip download --quiet --no-deps pypdfium2==5.15.2 -d work/wheel
(cd work/wheel && python3 -m zipfile -e pypdfium2-*.whl x)
export PDFIUM_LIB="$PWD/work/wheel/x/pypdfium2_raw/libpdfium.so"
cargo build --release --quiet
uptime
/usr/bin/python3 compare.py
