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


def test_resume_repairs_a_torn_last_line_and_drops_records_after_the_resumed_step(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 12)]
    # a crash cut the last record (step 12) mid-write
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 12, "lo')
    log = TrainingLog(str(tmp_path), keep_until=8)  # the state was saved at step 8
    assert [r["step"] for r in log.records] == list(range(1, 9))
    assert "1 unreadable line" in log.repair_note and "3 record(s) after step 8" in log.repair_note
    log({"step": 9, "loss": 0.5})
    on_disk = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in on_disk] == list(range(1, 10)) and on_disk[-1]["loss"] == 0.5
    # a new run (keep_until 0) starts an empty log; None keeps what is readable
    assert TrainingLog(str(tmp_path), keep_until=None).records == on_disk
    assert TrainingLog(str(tmp_path), keep_until=0).records == []
    assert (tmp_path / "log.jsonl").read_text() == ""


def test_an_intact_log_is_left_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    text = "".join(json.dumps({"step": s, "loss": 0.1}, sort_keys=True) + "\n" for s in (1, 2, 3))
    (tmp_path / "log.jsonl").write_text(text)
    log = TrainingLog(str(tmp_path), keep_until=3)
    assert log.repair_note == "" and (tmp_path / "log.jsonl").read_text() == text


class FakeWriter:
    """What TrainingLog needs of torch's SummaryWriter, recording the images it is given."""

    def __init__(self):
        self.images, self.flushes = [], 0

    def add_image(self, tag, pixels, step, dataformats="CHW"):
        self.images.append((tag, pixels.copy(), step, dataformats))

    def flush(self):
        self.flushes += 1

    def close(self):
        pass


def test_add_image_hands_tensorboard_the_8bit_pixels_and_is_a_no_op_without_it(tmp_path, monkeypatch):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    log = TrainingLog(str(tmp_path))
    assert log.add_image("validation/0", image, 4) is False  # no TensorBoard: nothing to do, no error
    assert not (tmp_path / "tensorboard").exists()
    log.writer = writer = FakeWriter()
    assert log.add_image("validation/0", image, 4) is True
    assert log.add_image("validation/1", image.convert("RGBA"), 6) is True  # alpha dropped
    assert [(t, s, f) for t, _, s, f in writer.images] == [("validation/0", 4, "HWC"), ("validation/1", 6, "HWC")]
    for _, got, _, _ in writer.images:
        assert got.dtype == np.uint8 and np.array_equal(got, pixels)
    assert writer.flushes == 2


def test_tensorboard_images_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TrainingLog(str(tmp_path))
    assert log.add_image("validation/0", Image.new("RGB", (8, 4), (10, 200, 30)), 3) is True
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (record,) = events.Images("validation/0")
    assert (record.step, record.width, record.height) == (3, 8, 4)
