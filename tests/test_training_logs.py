"""Training logs (JSON Lines, PIL plot, optional TensorBoard) and validation summaries."""
import json
import sys

import numpy as np
import pytest
import torch

from lumix_core.training.logs import TENSORBOARD_MISSING, TrainingLog, flatten_numbers, render_plot
from lumix_core.training.validation import consistency_summary
from lumix_core.maps import MAP_NAMES
from synthetic_scene import scene, shift


def test_jsonl_log_and_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    log = TrainingLog(str(tmp_path))
    assert log.tensorboard_note == TENSORBOARD_MISSING and log.writer is None
    for step in range(1, 6):
        record = {"step": step, "loss": 1.0 / step, "lr": 1e-4}
        if step % 2 == 0:
            record["validation"] = {"photometric_residual": 0.1 * step, "geometric_degrees": 20.0 - step}
        log(record)
    lines = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5] and lines[3]["validation"]["geometric_degrees"] == 16.0
    image = log.plot(size=(400, 300))
    assert (tmp_path / "plot.png").exists() and image.size == (400, 300)
    pixels = np.asarray(image)
    # three panels (loss, two metrics), each with its own coloured curve
    for colour in [(220, 60, 60), (60, 120, 220), (40, 160, 80)]:
        assert (pixels == colour).all(-1).sum() > 20, colour
    # a resumed run reads the earlier records and replaces those at or after its step
    again = TrainingLog(str(tmp_path))
    assert len(again.records) == 5
    again({"step": 4, "loss": 0.3})
    assert [r["step"] for r in again.records] == [1, 2, 3, 4]


def test_flatten_numbers_keeps_finite_numbers_only():
    assert flatten_numbers({"a": 1, "b": {"c": 2.5, "d": "x", "e": float("nan")}, "f": True}) == {"a": 1.0, "b/c": 2.5}
    assert np.asarray(render_plot([])).min() < 255  # says there is nothing yet


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    log = TrainingLog(str(tmp_path))
    log({"step": 1, "loss": 0.5})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_consistency_summary_prefers_aligned_maps():
    aligned = {k: v for k, v in scene(48).items() if k in MAP_NAMES}
    shifted = dict(aligned)
    shifted["depth"] = shift(aligned["depth"], 5)
    shifted["normal"] = shift(aligned["normal"], 5)
    shifted["albedo"] = shift(aligned["albedo"], 5)
    good, bad = consistency_summary([aligned]), consistency_summary([shifted])
    assert set(good) == {"photometric_residual", "geometric_degrees", "structural_alignment"}
    assert good["photometric_residual"] < bad["photometric_residual"]
    assert good["geometric_degrees"] < 5 and good["structural_alignment"] > bad["structural_alignment"]
    assert consistency_summary([{"color": aligned["color"]}]) == {}


def test_axis_ends_never_read_the_same_number():
    from lumix_core.training.logs import axis_labels
    assert axis_labels(95.64, 95.61) == ("95.64", "95.61")
    assert axis_labels(2.0, 1.0) == ("2", "1")
    assert axis_labels(0.123456, 0.123411) == ("0.1235", "0.1234")
    hi, lo = axis_labels(1234.5, 0.001)
    assert hi == "1.23e+03" and lo == "0.001"
