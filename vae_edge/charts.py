"""Small PNG charts drawn with pillow (no plotting library needed on the device)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vae_edge.runtime.images import save_image

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (127, 127, 127)]
W, H, L, R, T, B = 800, 480, 80, 200, 50, 60


# A TrueType font where one is found (DejaVu Sans ships with most Linux systems), else pillow's
# own at a size where its spaces show: at its default size words ran together ("speed-upover").
_FONTS = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "Arial.ttf", "Helvetica.ttc")
FONT_SIZE = 13


@functools.lru_cache(maxsize=1)
def _font():
    for name in _FONTS:
        try:
            return ImageFont.truetype(name, FONT_SIZE)
        except OSError:
            continue
    return ImageFont.load_default(size=FONT_SIZE)


def _marker(d: ImageDraw.ImageDraw, i: int, x: float, y: float, c) -> None:
    """Series i's marker: a circle, square, triangle or diamond, so that lines that overlap are
    still told apart."""
    r = 4
    shape = i % 4
    if shape == 0:
        d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    elif shape == 1:
        d.rectangle([x - r, y - r, x + r, y + r], fill=c)
    elif shape == 2:
        d.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=c)
    else:
        d.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=c)


def _frame(title: str, xlabel: str, ylabel: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((L, 15), title, fill="black", font=_font())
    d.rectangle([L, T, W - R, H - B], outline="black")
    d.text(((L + W - R) // 2, H - 12), xlabel, fill="black", font=_font(), anchor="mm")
    d.text((5, T - 20), ylabel, fill="black", font=_font())
    return img, d


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10**e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def latency_chart(report: dict, graph: str, path: str | Path) -> None:
    """Median latency against batch size, one line per variant (and PyTorch), log-log."""
    rows = [r for r in report["rows"] if r["graph"] == graph and r["kind"] in ("runtime", "eager")
            and r["threads"] == min(report["config"]["threads"])]
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault("torch eager" if r["kind"] == "eager" else r["variant"], []).append((r["batch"], r["p50_ms"]))
    img, d = _frame(f"{report['model']}: {graph} latency (p50, {min(report['config']['threads'])} thread)",
                    "batch size (log)", "ms (log)")
    xs = [b for s in series.values() for b, _ in s]
    ys = [v for s in series.values() for _, v in s]
    if not xs:
        save_image(img, path)
        return
    x0, x1 = math.log10(min(xs)), math.log10(max(xs)) + 1e-9
    y0, y1 = math.log10(min(ys) * 0.8), math.log10(max(ys) * 1.25)
    px = lambda x: L + (math.log10(x) - x0) / max(x1 - x0, 1e-9) * (W - R - L)  # noqa: E731
    py = lambda y: H - B - (math.log10(y) - y0) / max(y1 - y0, 1e-9) * (H - B - T)  # noqa: E731
    for v in _log_ticks(10**y0, 10**y1):
        d.line([L, py(v), W - R, py(v)], fill=(225, 225, 225))
        d.text((L - 55, py(v) - 7), f"{v:g}", fill="black", font=_font())
    for b in sorted(set(xs)):
        d.text((px(b) - 8, H - B + 6), str(b), fill="black", font=_font())
    ordered = sorted(series.items())
    for i, (name, pts) in enumerate(ordered):
        c = COLORS[i % len(COLORS)]
        pts = sorted(pts)
        # earlier lines wider: a line drawn over another of the same values leaves its edges showing
        width = 2 + 2 * (len(ordered) - 1 - i)
        d.line([(px(b), py(v)) for b, v in pts], fill=c, width=min(width, 8))
        for b, v in pts:
            _marker(d, i, px(b), py(v), c)
        d.line([W - R + 10, T + 10 + 18 * i, W - R + 30, T + 10 + 18 * i], fill=c, width=3)
        _marker(d, i, W - R + 20, T + 10 + 18 * i, c)
        d.text((W - R + 35, T + 3 + 18 * i), name, fill="black", font=_font())
    save_image(img, path)


def speedup_chart(report: dict, path: str | Path) -> None:
    """Speed-up of each variant over PyTorch eager, grouped by graph and batch size."""
    rows = [r for r in report["ratios"] if r["speedup_vs_torch"] and r["threads"] == min(report["config"]["threads"])]
    groups = sorted({(r["graph"], r["batch"]) for r in rows})
    variants = sorted({r["variant"] for r in rows})
    img, d = _frame(f"{report['model']}: speed-up over PyTorch eager (p50, same run)", "batch size, by graph", "times faster")
    if not rows:
        save_image(img, path)
        return
    top = max(r["speedup_vs_torch"] for r in rows) * 1.15
    py = lambda v: H - B - v / top * (H - B - T)  # noqa: E731
    step = max(1, math.ceil(top / 8))
    for v in range(0, math.floor(top) + 1, step):
        d.line([L, py(v), W - R, py(v)], fill=(225, 225, 225))
        d.text((L - 30, py(v) - 6), f"{v}x", fill="black", font=_font())
    d.line([L, py(1), W - R, py(1)], fill=(200, 0, 0))
    gw = (W - R - L) / len(groups)
    bw = gw * 0.8 / max(1, len(variants))
    for gi, (g, b) in enumerate(groups):
        d.text((L + gi * gw + gw / 2, H - B + 12), str(b), fill="black", font=_font(), anchor="mm")
        for vi, v in enumerate(variants):
            r = next((r for r in rows if r["graph"] == g and r["batch"] == b and r["variant"] == v), None)
            if r is None:
                continue
            x = L + gi * gw + gw * 0.1 + vi * bw
            d.rectangle([x, py(r["speedup_vs_torch"]), x + bw - 2, py(0)], fill=COLORS[vi % len(COLORS)])
    for g in dict.fromkeys(g for g, _ in groups):  # each graph's name centred under its batch sizes
        idx = [i for i, (gg, _) in enumerate(groups) if gg == g]
        x0, x1 = L + idx[0] * gw + 4, L + (idx[-1] + 1) * gw - 4
        d.line([x0, H - B + 22, x1, H - B + 22], fill=(120, 120, 120))
        d.text(((x0 + x1) / 2, H - B + 32), g, fill="black", font=_font(), anchor="mm")
    for vi, v in enumerate(variants):
        d.rectangle([W - R + 10, T + 6 + 18 * vi, W - R + 28, T + 16 + 18 * vi], fill=COLORS[vi % len(COLORS)])
        d.text((W - R + 35, T + 4 + 18 * vi), v, fill="black", font=_font())
    save_image(img, path)
