"""Small charts drawn with Pillow (no plotting dependency): enough for benchmark and
evaluation reports that people would rather look at than read.

    >>> bar_chart({"unet step": {"torch": {"unedited": (6.1, 6.8), "edited": (6.2, 6.9)}}}, unit="ms").save("b.png")
    >>> line_chart({"erased": [(0.5, 0.4), (1, 0.1)]}, x_label="eta", y_label="rate").save("l.png")
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

COLORS = [(66, 133, 244), (234, 67, 53), (251, 188, 5), (52, 168, 83), (155, 89, 182), (120, 120, 120)]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return value


def bar_chart(panels: dict[str, dict[str, dict[str, tuple[float, float | None]]]], title: str = "",
              unit: str = "", panel_size: tuple[int, int] = (360, 260)) -> Image.Image:
    """Grouped bars, one panel per key of ``panels``: panel -> group -> series -> (value, whisker).
    The whisker (e.g. p90 over a p50 bar) may be None. Each panel has its own scale."""
    font = ImageFont.load_default()
    pw, ph = panel_size
    top, bottom, left = 36, 40, 56
    width = max(1, len(panels)) * pw + 16
    height = ph + top + 28
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), title, fill="black", font=font)
    series = list(dict.fromkeys(s for groups in panels.values() for g in groups.values() for s in g))
    for i, name in enumerate(series):  # legend
        x = width - 110 * (len(series) - i)
        draw.rectangle([x, 8, x + 10, 18], fill=COLORS[i % len(COLORS)])
        draw.text((x + 14, 7), name, fill="black", font=font)
    for p, (panel, groups) in enumerate(panels.items()):
        x0, y0 = p * pw + left, top
        plot_w, plot_h = pw - left - 12, ph - bottom
        vmax = _nice_max(max((max(v, w or 0) for g in groups.values() for v, w in g.values()), default=1))
        draw.text((x0, y0 - 14 + 2), f"{panel} ({unit})" if unit else panel, fill="black", font=font)
        for k in range(5):  # axis and grid
            v = vmax * k / 4
            y = y0 + plot_h - plot_h * k / 4
            draw.line([x0, y, x0 + plot_w, y], fill=(225, 225, 225))
            draw.text((x0 - 6 - font.getlength(f"{v:g}"), y - 6), f"{v:g}", fill="black", font=font)
        draw.line([x0, y0, x0, y0 + plot_h], fill="black")
        slot = plot_w / max(1, len(groups))
        bar_w = slot * 0.8 / max(1, len(series))
        for gi, (group, values) in enumerate(groups.items()):
            gx = x0 + gi * slot + slot * 0.1
            for si, name in enumerate(series):
                if name not in values:
                    continue
                value, whisker = values[name]
                bx = gx + si * bar_w
                y = y0 + plot_h - plot_h * value / vmax
                draw.rectangle([bx, y, bx + bar_w - 2, y0 + plot_h], fill=COLORS[si % len(COLORS)])
                if whisker is not None:
                    wy = y0 + plot_h - plot_h * min(whisker, vmax) / vmax
                    cx = bx + (bar_w - 2) / 2
                    draw.line([cx, wy, cx, y], fill="black")
                    draw.line([cx - 3, wy, cx + 3, wy], fill="black")
                label = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
                draw.text((bx, y - 12), label, fill="black", font=font)
            draw.text((gx, y0 + plot_h + 6), group, fill="black", font=font)
    return img


def line_chart(series: dict[str, list[tuple[float, float]]], title: str = "", x_label: str = "", y_label: str = "",
               y_range: tuple[float, float] | None = None, x_range: tuple[float, float] | None = None,
               reference: dict[str, float] | None = None, point_labels: dict[str, list[str]] | None = None,
               percent: bool = False, connect: bool = True, size: tuple[int, int] = (520, 340)) -> Image.Image:
    """Lines with point markers: series name -> [(x, y), ...], on shared linear axes.

    ``reference``: a dashed horizontal line per series name (e.g. the base model's level).
    ``point_labels``: text beside each point of a series (in the order given).
    ``x_range``: fixed x axis with five even ticks (default: the data's range, a tick per x).
    ``percent``: tick labels of [0, 1] values as percentages."""
    font = ImageFont.load_default()
    w, h = size
    left, right, top, bottom = 56, 130, 44, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), title, fill="black", font=font)
    xs = [x for pts in series.values() for x, _ in pts] or [0, 1]
    ys = [y for pts in series.values() for _, y in pts] + list((reference or {}).values()) or [0, 1]
    x_min, x_max = x_range or (min(xs), max(xs))
    x_max = x_max if x_max > x_min else x_min + 1
    y_min, y_max = y_range or (min(0.0, min(ys)), _nice_max(max(ys)))
    plot_w, plot_h = w - left - right, h - top - bottom
    fmt = (lambda v: f"{100 * v:.0f}%") if percent else (lambda v: f"{v:g}")
    to_px = lambda x, y: (left + plot_w * (x - x_min) / (x_max - x_min),  # noqa: E731
                          top + plot_h - plot_h * (y - y_min) / ((y_max - y_min) or 1))
    for k in range(5):
        v = y_min + (y_max - y_min) * k / 4
        _, y = to_px(x_min, v)
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        draw.text((left - 6 - font.getlength(fmt(v)), y - 6), fmt(v), fill="black", font=font)
    x_ticks = [x_min + (x_max - x_min) * k / 4 for k in range(5)] if x_range else sorted(set(xs))
    for x in x_ticks:
        px, _ = to_px(x, y_min)
        label = fmt(x) if x_range else f"{x:g}"
        draw.line([px, top + plot_h, px, top + plot_h + 4], fill="black")
        draw.text((px - font.getlength(label) / 2, top + plot_h + 6), label, fill="black", font=font)
    draw.line([left, top, left, top + plot_h], fill="black")
    draw.line([left, top + plot_h, left + plot_w, top + plot_h], fill="black")
    draw.text((left + plot_w / 2 - font.getlength(x_label) / 2, h - 16), x_label, fill="black", font=font)
    draw.text((4, top - 18), y_label, fill="black", font=font)
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if reference and name in reference:
            _, ry = to_px(x_min, reference[name])
            for x in range(left, left + plot_w, 8):
                draw.line([x, ry, min(x + 4, left + plot_w), ry], fill=color)
        pixels = [to_px(x, y) for x, y in pts]
        if connect and len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for j, (px, py) in enumerate(pixels):
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
            labels = (point_labels or {}).get(name)
            if labels and j < len(labels):
                draw.text((px + 5, py - 13), labels[j], fill="black", font=font)
        ly = top + 14 * i
        draw.rectangle([w - right + 40, ly + 2, w - right + 50, ly + 12], fill=color)
        draw.text((w - right + 54, ly + 1), name, fill="black", font=font)
    return img


def side_by_side(*images: Image.Image) -> Image.Image:
    """Panels in a row, top-aligned, on white."""
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        out.paste(image, (x, 0))
        x += image.width
    return out
