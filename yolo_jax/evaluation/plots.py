"""The diagnostics' plots drawn with PIL (matplotlib is only a test/notebook extra): line charts, a heat map, bars.
Each function takes the JSON-able dicts of `diagnostics.py` and returns an (H, W, 3) uint8 RGB image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from yolo_jax.visualize import _font, class_color

WIDTH, HEIGHT = 760, 520
MARGIN = (64, 40, 200, 52)  # left, top, right (the legend), bottom, in pixels
LEGEND_MAX = 20  # classes listed in a legend; the rest are drawn but not named
GREY, BLACK = (170, 170, 170), (0, 0, 0)


def _name(class_names: Sequence[str], c: int) -> str:
    return class_names[c] if c < len(class_names) else str(c)


def _axes(draw: ImageDraw.ImageDraw, title: str, xlabel: str, ylabel: str,
          ylim: tuple[float, float] = (0.0, 1.0), xticks: bool = True) -> Callable[[float, float], tuple[float, float]]:
    """Frame, grid and 0..1 ticks (x, unless not `xticks`) / ylim ticks (y) of the plot area → data (x, y) →
    pixel (x, y)."""
    left, top, right, bottom = MARGIN
    x0, x1, y0, y1 = left, WIDTH - right, HEIGHT - bottom, top
    font = _font(12)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * x, y0 + (y1 - y0) * (y - ylim[0]) / max(ylim[1] - ylim[0], 1e-12)

    for k in range(6):
        t = k / 5
        px, _ = to_px(t, ylim[0])
        _, py = to_px(0.0, ylim[0] + t * (ylim[1] - ylim[0]))
        if xticks:
            draw.line([(px, y0), (px, y1)], fill=(235, 235, 235))
            draw.text((px, y0 + 4), f'{t:g}', fill=BLACK, font=font, anchor='ma')
        draw.line([(x0, py), (x1, py)], fill=(235, 235, 235))
        draw.text((x0 - 6, py), f'{ylim[0] + t * (ylim[1] - ylim[0]):.3g}', fill=BLACK, font=font, anchor='rm')
    draw.rectangle([x0, y1, x1, y0], outline=BLACK)
    draw.text(((x0 + x1) / 2, y0 + 22), xlabel, fill=BLACK, font=font, anchor='ma')
    draw.text((8, y1 - 24), ylabel, fill=BLACK, font=font)
    draw.text(((x0 + x1) / 2, 8), title, fill=BLACK, font=_font(14), anchor='ma')
    return to_px


def _legend(draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, tuple[int, int, int]]], hidden: int) -> None:
    """Colour swatches and labels right of the plot area; `hidden` more entries are summed up in one line."""
    x, y, font = WIDTH - MARGIN[2] + 12, MARGIN[1], _font(12)
    for label, color in entries:
        draw.line([(x, y + 7), (x + 18, y + 7)], fill=color, width=3)
        draw.text((x + 24, y), label, fill=BLACK, font=font)
        y += 18
    if hidden:
        draw.text((x, y), f'(+{hidden} more classes)', fill=GREY, font=font)


def _canvas(width: int = WIDTH, height: int = HEIGHT) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new('RGB', (width, height), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def pr_curves(pr: dict[str, Any], class_names: Sequence[str]) -> np.ndarray:
    """Interpolated precision against recall per class with ground truth (legend: class and AP@0.5, best first)."""
    image, draw = _canvas()
    rows = [e for e in pr['per_class'] if e['ap'] is not None]
    mean = np.mean([e['ap'] for e in rows]) if rows else float('nan')
    to_px = _axes(draw, f'precision-recall at IoU 0.5 (mAP@0.5 {100 * mean:.1f})', 'recall', 'precision')
    for e in rows:
        points = [to_px(r, p) for r, p in zip(pr['recall'], e['precision'], strict=True)]
        draw.line(points, fill=class_color(e['class']), width=2)
    rows.sort(key=lambda e: -e['ap'])
    _legend(draw, [(f"{_name(class_names, e['class'])} {100 * e['ap']:.1f}", class_color(e['class']))
                   for e in rows[:LEGEND_MAX]], max(len(rows) - LEGEND_MAX, 0))
    return np.asarray(image)


def f1_threshold(f1: dict[str, Any], class_names: Sequence[str]) -> np.ndarray:
    """F1 against the score threshold: each class with ground truth (thin), all classes (micro, thick black) and a
    dashed line at the best threshold."""
    image, draw = _canvas()
    best = f1['overall']['best']
    title = 'F1 against the score threshold' + (
        f" (best {best['f1']:.3f} at {best['threshold']:.3f})" if best['threshold'] is not None else '')
    to_px = _axes(draw, title, 'score threshold', 'F1')
    rows = [e for e in f1['per_class'] if e['num_gt'] > 0]
    for e in rows:
        draw.line([to_px(t, v) for t, v in zip(f1['thresholds'], e['f1'], strict=True)],
                  fill=class_color(e['class']), width=1)
    draw.line([to_px(t, v) for t, v in zip(f1['thresholds'], f1['overall']['f1'], strict=True)], fill=BLACK, width=3)
    if best['threshold'] is not None:
        x, _ = to_px(best['threshold'], 0.0)
        for y in range(MARGIN[1], HEIGHT - MARGIN[3], 8):
            draw.line([(x, y), (x, y + 4)], fill=BLACK)
    _legend(draw, [('all classes', BLACK)] + [(_name(class_names, e['class']), class_color(e['class']))
                                               for e in rows[:LEGEND_MAX]], max(len(rows) - LEGEND_MAX, 0))
    return np.asarray(image)


def _vertical_text(image: Image.Image, xy: tuple[int, int], text: str, size: int) -> None:
    """`text` rotated 90 degrees (read bottom to top), its bottom end at xy."""
    font = _font(size)
    w = int(ImageDraw.Draw(image).textlength(text, font=font)) + 4
    strip = Image.new('RGB', (w, size + 6), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 1), text, fill=BLACK, font=font)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (xy[0] - strip.width // 2, xy[1] - strip.height))


def confusion_matrix(cm: dict[str, Any], class_names: Sequence[str]) -> np.ndarray:
    """The (C + 1)^2 counts, rows predicted, columns true, shaded by the share of the column (true class) and
    labelled with the count when the cells are large enough."""
    counts = np.asarray(cm['counts'], np.int64)
    n = len(counts)
    names = [_name(class_names, c) for c in range(n - 1)] + ['background']
    cell = int(np.clip(560 // max(n, 1), 6, 48))
    label = 12 if cell >= 14 else 8
    pad = min(max(len(s) for s in names) * (label * 2 // 3) + 12, 160)
    width, height = pad + n * cell + 20, pad + n * cell + 60
    image, draw = _canvas(max(width, 360), height)
    draw.text((8, 8), f"confusion matrix at score >= {cm['score_threshold']:g} (IoU 0.5)", fill=BLACK, font=_font(14))
    draw.text((8, 28), 'rows: predicted, columns: true', fill=GREY, font=_font(12))
    x0, y0 = pad, pad + 40
    share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    for i in range(n):
        if cell >= 9:  # else (many classes) the names would overlap: the JSON has the counts
            draw.text((x0 - 4, y0 + i * cell + cell / 2), names[i][:24], fill=BLACK, font=_font(label), anchor='rm')
            _vertical_text(image, (x0 + i * cell + cell // 2, y0 - 4), names[i][:24], label)
        for j in range(n):
            shade = int(255 * (1 - 0.85 * share[i, j]))
            box = [x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell, y0 + (i + 1) * cell]
            draw.rectangle(box, fill=(shade, shade, 255), outline=(220, 220, 220))
            if cell >= 24 and counts[i, j]:
                draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(counts[i, j]),
                          fill=BLACK if shade > 120 else (255, 255, 255), font=_font(11), anchor='mm')
    return np.asarray(image)


def ap_by_size(buckets: Sequence[dict[str, Any]], coco: dict[str, float] | None) -> np.ndarray:
    """Bars per area range: VOC mAP@0.5 (blue) and, when given, pycocotools' AP@[.5:.95] (orange); the number of
    ground-truth boxes under each group."""
    image, draw = _canvas()
    to_px = _axes(draw, 'AP by object size', 'area w * h in original pixels (COCO: small < 32^2 <= medium < 96^2 '
                  '<= large)', 'AP', xticks=False)
    font = _font(12)
    series = [('VOC mAP@0.5', (60, 110, 220), [b['map'] for b in buckets])]
    if coco is not None:
        series.append(('COCO AP@[.5:.95]', (240, 150, 40), [coco[b['name']] if b['name'] in coco else None
                                                              for b in buckets]))
    group = 1.0 / max(len(buckets), 1)
    bar = group * 0.7 / len(series)
    for k, b in enumerate(buckets):
        x, _ = to_px((k + 0.5) * group, 0.0)
        draw.text((x, HEIGHT - MARGIN[3] + 4), f"{b['name']}: {b['num_gt']} boxes", fill=BLACK, font=font,
                  anchor='ma')
        for s, (_, color, values) in enumerate(series):
            v = values[k]
            left = (k + 0.15) * group + s * bar
            if v is None or not np.isfinite(v):
                draw.text(to_px(left + bar / 2, 0.02), 'n/a', fill=GREY, font=font, anchor='mb')
                continue
            (bx0, by0), (bx1, by1) = to_px(left, 0.0), to_px(left + bar, v)
            draw.rectangle([bx0, by1, bx1, by0], fill=color)
            draw.text(((bx0 + bx1) / 2, by1 - 2), f'{100 * v:.1f}', fill=BLACK, font=font, anchor='mb')
    _legend(draw, [(name, color) for name, color, _ in series], 0)
    return np.asarray(image)


def error_types(errors: dict[str, Any], class_names: Sequence[str]) -> np.ndarray:
    """Bars per error type: the mAP@0.5 gained by fixing that type alone (error_types.py), labelled with the gain
    and the number of such errors; each class's AP gain as a tick in its colour (up to LEGEND_MAX classes)."""
    image, draw = _canvas()
    known = errors['map'] is not None
    rows = [e for e in errors['per_class'] if e['ap'] is not None][:LEGEND_MAX]
    values = [errors['delta_map'][k] for k in errors['types']] if known else []
    values += [e['delta_ap'][k] for e in rows for k in errors['types']]
    ylim = (0.0, max(0.05, float(np.ceil(max(values + [0.0]) * 1.15 * 20) / 20)))  # a multiple of 0.05
    title = 'mAP@0.5 gained by fixing one error type' + (f" (mAP@0.5 {100 * errors['map']:.1f})" if known else '')
    to_px = _axes(draw, title, 'error type (bar: mean over classes; ticks: each class)', 'gain', ylim=ylim,
                  xticks=False)
    font, group = _font(12), 1.0 / max(len(errors['types']), 1)
    for k, name in enumerate(errors['types']):
        x, _ = to_px((k + 0.5) * group, 0.0)
        draw.text((x, HEIGHT - MARGIN[3] + 4), name, fill=BLACK, font=font, anchor='ma')
        if not known:
            continue
        gain = max(errors['delta_map'][name], 0.0)
        (bx0, by0), (bx1, by1) = to_px((k + 0.2) * group, 0.0), to_px((k + 0.8) * group, gain)
        draw.rectangle([bx0, by1, bx1, by0], fill=(150, 180, 240))
        for e in rows:
            _, ty = to_px(0.0, max(e['delta_ap'][name], 0.0))
            draw.line([(bx0, ty), (bx1, ty)], fill=class_color(e['class']), width=3)
        draw.text(((bx0 + bx1) / 2, by1 - 2), f"{errors['delta_map'][name]:+.3f}\n{errors['counts'][name]} errors",
                  fill=BLACK, font=font, anchor='md', align='center')
    _legend(draw, [(_name(class_names, e['class']), class_color(e['class'])) for e in rows],
            max(sum(e['ap'] is not None for e in errors['per_class']) - LEGEND_MAX, 0))
    return np.asarray(image)
