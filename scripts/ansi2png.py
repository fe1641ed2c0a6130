#!/usr/bin/python3
"""Render a terminal capture with ANSI colours (`tmux capture-pane -e -p`) to a PNG.

Usage: ansi2png.py CAPTURE.ans OUT.png [COLUMNS ROWS]

Debian packages: python3-pil, fonts-dejavu-core. Each cell is drawn at a fixed size; SGR codes
handled: reset, bold, reverse, 16/256/true colours for foreground and background. Half blocks
(used by the page preview) are drawn as exact rectangles. Wide characters (East Asian wide and
full-width) take two cells and combining marks join the previous cell, as in the terminal.
"""
import re
import sys
import unicodedata

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 16
CELL_W, CELL_H = 10, 20
DEFAULT_FG = (220, 220, 220)
DEFAULT_BG = (24, 24, 28)
BASE16 = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16),
    (36, 114, 200), (188, 63, 188), (17, 168, 205), (229, 229, 229),
    (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67),
    (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]


def xterm256(n):
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        levels = [0, 95, 135, 175, 215, 255]
        return (levels[n // 36], levels[(n // 6) % 6], levels[n % 6])
    v = 8 + 10 * (n - 232)
    return (v, v, v)


def apply_sgr(params, st):
    codes = [int(p) if p else 0 for p in params.split(";")] if params else [0]
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0:
            st.update(fg=None, bg=None, bold=False, rev=False)
        elif c == 1:
            st["bold"] = True
        elif c == 22:
            st["bold"] = False
        elif c == 7:
            st["rev"] = True
        elif c == 27:
            st["rev"] = False
        elif 30 <= c <= 37:
            st["fg"] = BASE16[c - 30]
        elif 90 <= c <= 97:
            st["fg"] = BASE16[c - 90 + 8]
        elif 40 <= c <= 47:
            st["bg"] = BASE16[c - 40]
        elif 100 <= c <= 107:
            st["bg"] = BASE16[c - 100 + 8]
        elif c == 39:
            st["fg"] = None
        elif c == 49:
            st["bg"] = None
        elif c in (38, 48) and i + 1 < len(codes):
            key = "fg" if c == 38 else "bg"
            if codes[i + 1] == 5 and i + 2 < len(codes):
                st[key] = xterm256(codes[i + 2])
                i += 2
            elif codes[i + 1] == 2 and i + 4 < len(codes):
                st[key] = tuple(codes[i + 2:i + 5])
                i += 4
        i += 1


def zero_width(ch):
    """Combining marks and format characters take no cell of their own."""
    return unicodedata.combining(ch) != 0 or unicodedata.category(ch) in ("Mn", "Me", "Cf")


def parse(text):
    """Rows of cells (char, fg, bg, bold)."""
    rows = []
    st = dict(fg=None, bg=None, bold=False, rev=False)
    token = re.compile(r"\x1b\[([0-9;]*)m|\x1b\][^\x07]*\x07|\x1b.|(.)", re.S)
    for line in text.split("\n"):
        row = []
        for m in token.finditer(line):
            if m.group(2) is not None:
                ch = m.group(2)
                fg = st["fg"] or DEFAULT_FG
                bg = st["bg"] or DEFAULT_BG
                if st["rev"]:
                    fg, bg = bg, fg
                if zero_width(ch):
                    if row and row[-1] is not None:
                        prev = row[-1]
                        row[-1] = (prev[0] + ch,) + prev[1:]
                    continue
                row.append((ch, fg, bg, st["bold"]))
                if unicodedata.east_asian_width(ch) in ("W", "F"):
                    row.append(None)  # the second cell of a wide character
            elif m.group(0).startswith("\x1b["):
                apply_sgr(m.group(1), st)
        rows.append(row)
    return rows


def render(rows, cols, nrows, out):
    img = Image.new("RGB", (cols * CELL_W, nrows * CELL_H), DEFAULT_BG)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, SIZE)
    bold = ImageFont.truetype(FONT_BOLD, SIZE)
    for y, row in enumerate(rows[:nrows]):
        for x, cell in enumerate(row[:cols]):
            if cell is None:
                continue
            ch, fg, bg, is_bold = cell
            x0, y0 = x * CELL_W, y * CELL_H
            wide = x + 1 < len(row) and row[x + 1] is None
            w = CELL_W * (2 if wide else 1)
            draw.rectangle([x0, y0, x0 + w - 1, y0 + CELL_H - 1], fill=bg)
            if ch == "\u2580":  # upper half block: top half in fg
                draw.rectangle([x0, y0, x0 + CELL_W - 1, y0 + CELL_H // 2 - 1], fill=fg)
            elif ch == "\u2588":  # full block
                draw.rectangle([x0, y0, x0 + CELL_W - 1, y0 + CELL_H - 1], fill=fg)
            elif ch != " ":
                draw.text((x0, y0 + 1), ch, font=bold if is_bold else font, fill=fg)
    img.save(out)


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8", errors="replace") as f:
        rows = parse(f.read().rstrip("\n"))
    cols = int(sys.argv[3]) if len(sys.argv) > 3 else max(len(r) for r in rows)
    nrows = int(sys.argv[4]) if len(sys.argv) > 4 else len(rows)
    render(rows, cols, nrows, out)


if __name__ == "__main__":
    main()
