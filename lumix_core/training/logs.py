"""Training logs: JSON Lines (one record per logged step), a PNG plot of loss and validation metrics
drawn with PIL, and TensorBoard event files (scalars, validation images) when the `tensorboard`
package is installed."""
from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from .files import LOG_NAME, PLOT_NAME, atomic_write

TENSORBOARD_MISSING = "TensorBoard logging is off: install the 'tensorboard' package to get event files"


def flatten_numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """{"validation": {"photometric": 0.1}} -> {"validation/photometric": 0.1}; numbers only."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_numbers(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class TrainingLog:
    """Appends records to `<folder>/log.jsonl`; `plot()` redraws `<folder>/plot.png`.

    keep_until: the step the run starts from (0 for a new run, the state's step on resume). Records
    after it are dropped (a resumed run writes them again), and so is a torn line (a crash while
    writing); the file is then rewritten atomically. None keeps every readable record."""

    def __init__(self, folder: str, tensorboard: bool = True, keep_until: int | None = None):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.jsonl = os.path.join(folder, LOG_NAME)
        self.records: list[dict] = []
        self.repair_note = ""
        if os.path.isfile(self.jsonl):  # a resumed run continues its log
            self.records, self.repair_note = _read_records(self.jsonl, keep_until)
            if self.repair_note:
                text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
                atomic_write(self.jsonl, lambda tmp: _write_text(tmp, text))
        self.writer, self.tensorboard_note = None, None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # purge_step: TensorBoard hides the events of the steps this run writes again
                purge = None if keep_until is None else keep_until + 1
                self.writer = SummaryWriter(os.path.join(folder, "tensorboard"), purge_step=purge)
            except ImportError:
                self.tensorboard_note = TENSORBOARD_MISSING

    def __call__(self, record: dict) -> None:
        self.records = [r for r in self.records if r.get("step", -1) < record.get("step", 0)] + [record]
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            step = int(record.get("step", 0))
            for name, value in flatten_numbers({k: v for k, v in record.items() if k != "step"}).items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def add_image(self, tag: str, image: Image.Image, step: int) -> bool:
        """`image` (PIL) as TensorBoard image `tag` at `step`; True when written, False without
        TensorBoard (the validation PNGs are the record then)."""
        if self.writer is None:
            return False
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        self.writer.add_image(tag, pixels, int(step), dataformats="HWC")
        self.writer.flush()
        return True

    def plot(self, size=(768, 384)) -> Image.Image:
        image = render_plot(self.records, size)
        atomic_write(os.path.join(self.folder, PLOT_NAME), lambda tmp: image.save(tmp, format="PNG"))
        return image

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None  # closing twice (an error path, then the caller) is harmless


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _read_records(path: str, keep_until: int | None) -> tuple[list[dict], str]:
    """The readable records of a log.jsonl up to step keep_until, and a note of what was dropped
    ("" when nothing was)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records, unreadable, later = [], 0, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            step = record["step"] if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError("no step")
        except (ValueError, KeyError, UnicodeDecodeError):
            unreadable += 1  # a torn last line (a crash mid-write), or damage
            continue
        if keep_until is not None and step > keep_until:
            later += 1
            continue
        records.append(record)
    notes = []
    if unreadable:
        notes.append(f"dropped {unreadable} unreadable line(s) (a crash while writing)")
    if later:
        notes.append(f"dropped {later} record(s) after step {keep_until}, where this run starts")
    if lines and lines[-1].strip() and not unreadable:  # a complete record without its newline
        notes.append("ended the last line")
    return records, "log.jsonl: " + "; ".join(notes) if notes else ""


def _series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        step = r.get("step")
        if step is None:
            continue
        numbers = flatten_numbers({"loss": r.get("loss"), "validation": r.get("validation") or {}})
        for name, value in numbers.items():
            series.setdefault(name, []).append((int(step), value))
    return series


COLOURS = [(220, 60, 60), (60, 120, 220), (40, 160, 80), (200, 140, 20), (150, 70, 200), (20, 160, 170)]


def axis_labels(hi: float, lo: float) -> tuple[str, str]:
    """The two ends of a panel's axis with as many significant digits (3 to 8) as it takes for them to
    differ: a metric that moves little (95.61 to 95.64) must not read '95.6' at both ends."""
    for digits in range(3, 9):
        labels = f"{hi:.{digits}g}", f"{lo:.{digits}g}"
        if labels[0] != labels[1]:
            return labels
    return labels


def render_plot(records: list[dict], size=(768, 384)) -> Image.Image:
    """One panel per series (loss first, then each validation metric), each scaled to its own range."""
    series = _series(records)
    names = (["loss"] if "loss" in series else []) + sorted(n for n in series if n != "loss")
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if not names:
        draw.text((10, 10), "no training records yet", fill=(0, 0, 0))
        return image
    panel_h = height // len(names)
    for p, name in enumerate(names):
        points = series[name]
        top, left, right = p * panel_h, 60, width - 10
        bottom = top + panel_h - 16
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)
        draw.rectangle([left, top + 14, right, bottom], outline=(180, 180, 180))
        draw.text((4, top + 2), f"{name}  last {values[-1]:.4g}", fill=COLOURS[p % len(COLOURS)])
        hi_label, lo_label = axis_labels(hi, lo)
        draw.text((4, top + 16), hi_label, fill=(90, 90, 90))
        draw.text((4, bottom - 10), lo_label, fill=(90, 90, 90))
        xy = [(left + (right - left) * (s - s0) / (s1 - s0), bottom - (bottom - top - 14) * (v - lo) / (hi - lo))
              for s, v in points]
        if len(xy) == 1:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=COLOURS[p % len(COLOURS)])
        else:
            draw.line(xy, fill=COLOURS[p % len(COLOURS)], width=2)
    draw.text((width - 120, height - 14), f"steps {min(r.get('step', 0) for r in records)}-"
              f"{max(r.get('step', 0) for r in records)}", fill=(90, 90, 90))
    return image
