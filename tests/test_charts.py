"""The benchmark's charts: readable text, and every series visible where series coincide."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFont

from vae_edge import charts


def _report(p50: dict[str, list[float]], batches=(1, 8, 64)) -> dict:
    rows = [{"graph": "decoder", "kind": "eager" if v == "torch" else "runtime", "variant": v,
             "threads": 1, "batch": b, "p50_ms": ms} for v, values in p50.items() for b, ms in zip(batches, values, strict=True)]
    ratios = [{"graph": "decoder", "variant": v, "threads": 1, "batch": b, "speedup_vs_torch": p50["torch"][i] / ms}
              for v, values in p50.items() if v != "torch" for i, (b, ms) in enumerate(zip(batches, values, strict=True))]
    return {"model": "m", "config": {"threads": [1]}, "rows": rows, "ratios": ratios}


def _plot_pixels(path, color) -> int:
    img = np.asarray(Image.open(path).convert("RGB"))[:, charts.L + 1: charts.W - charts.R - 1]
    return int(np.all(img == color, axis=-1).sum())


def test_coinciding_lines_all_visible(tmp_path):
    """Two variants with the same latencies: both lines show (one drawn over the other hid it)."""
    rep = _report({"int8-dynamic": [0.02, 0.03, 0.1], "int8-static": [0.02, 0.03, 0.1], "torch": [0.1, 0.2, 0.5]})
    charts.latency_chart(rep, "decoder", tmp_path / "l.png")
    for i in range(3):  # series sorted by name: int8-dynamic, int8-static, torch eager
        assert _plot_pixels(tmp_path / "l.png", charts.COLORS[i]) > 50, i


def test_text_is_a_truetype_font_with_spaces():
    """Pillow's bitmap font ran words together ("speed-upover"): the charts use a scalable font,
    in which a space is a visible gap."""
    font = charts._font()
    assert isinstance(font, ImageFont.FreeTypeFont)
    assert font.getlength("a b") - font.getlength("ab") >= 3
