"""Training validation (nodes/training_validation.make_validation) inside a real ComfyUI, on a tiny
random FLUX patched for training: the sampled maps are the LumiX Intrinsic Sampler's for the same
conditioning, the metrics are consistency_summary's of those maps and the old private path's, the
grids hold those maps, files are written, nothing shows on the progress bar, Cancel stops it."""
import importlib
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfy_host import (run_dataset_node, TinyCLIP, TinyVAE, extension_module, load_extension,
                        tiny_flux)  # first: skips this module where there is no ComfyUI
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.utils  # noqa: E402
from lumix_core import MAP_NAMES  # noqa: E402
from lumix_core.training.logs import TrainingLog  # noqa: E402
from lumix_core.training.validation import GRID_GAP, LABEL_HEIGHT, consistency_summary  # noqa: E402
from training_fixtures import make_rooms  # noqa: E402

NODES = load_extension()
Sampler = NODES["LumiXSampler"]
package = extension_module().__name__
tm = importlib.import_module(package + ".nodes.training_model")
tv = importlib.import_module(package + ".nodes.training_validation")
SIZE, STEPS, SCENES = 32, 3, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("input")
    make_rooms(inputs / "scenes", 3)
    return run_dataset_node(inputs, "scenes", TinyVAE(0), TinyCLIP()).result[0]


@pytest.fixture(scope="module")
def models():
    """(raw base, the Trainer's patched model with non-zero adapters): every weight filled."""
    raw = tiny_flux(seed=0)
    adapters = tm.new_adapters(raw, rank=2, alpha=1.0, num_maps=5, seed=1)
    with torch.no_grad():  # G3 starts at 0 (the base's output): fill it so the adapters act
        for i, p in enumerate(adapters.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + i)) * 0.2)
    return raw, tm.training_model(raw, adapters, gradient_checkpointing=True)


def sampler_maps(model, data, k):
    """Caption k through the LumiX Intrinsic Sampler node, as the Trainer's validation ran it before."""
    text, empty = load_file(data.scenes[k].text), load_file(data.empty_text)
    positive = [[text["context"][None].float(), {"pooled_output": text["pooled"][None].float(), "guidance": 3.5}]]
    negative = [[empty["context"][None].float(), {"pooled_output": empty["pooled"][None].float()}]]
    with torch.no_grad():
        out = Sampler.execute(model=model, positive=positive, negative=negative, vae=TinyVAE(0), seed=k, steps=STEPS,
                              cfg=1.0, sampler_name="euler", scheduler="simple", width=SIZE, height=SIZE, scenes=1,
                              shared_noise=True).result
    return {name: image[0].float().cpu() for name, image in zip(MAP_NAMES, out)}


def to_8bit(image):
    scaled = image.numpy().astype(np.float32) * np.float32(255.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class FakeWriter:
    def __init__(self):
        self.images = []

    def add_image(self, tag, pixels, step, dataformats="CHW"):
        self.images.append((tag, pixels.copy(), step, dataformats))

    def flush(self):
        pass

    def close(self):
        pass


def recording_hook():
    calls = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        calls.append((value, total, preview is not None))
        comfy.model_management.throw_exception_if_processing_interrupted()  # what main.py's hook does
    return hook, calls


def test_validation_samples_the_sampler_nodes_maps_measures_them_and_writes_their_grids(dataset, models, tmp_path):
    raw, patched = models
    base = {k: v.clone() for k, v in raw.model.diffusion_model.state_dict().items()}
    raw_options = repr(raw.model_options)
    log = TrainingLog(str(tmp_path / "log"), tensorboard=False)
    log.writer = writer = FakeWriter()
    validation = tv.make_validation(patched, TinyVAE(0), dataset, scenes=SCENES, size=SIZE, steps=STEPS,
                                    folder=str(tmp_path / "run"), log=log)
    hook, calls = recording_hook()
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with torch.inference_mode(False), torch.enable_grad():  # as the Trainer calls it
            metrics = validation(7)
        assert calls == []  # no progress, no five-map preview on the caller's bar
        expected = [sampler_maps(patched, dataset, k) for k in range(SCENES)]
        assert len(calls) >= STEPS  # the node's own path does report through the same hook
    finally:
        comfy.utils.set_progress_bar_global_hook(None)

    # the maps are bit-identical to the sampler node's, the metrics consistency_summary's of them
    assert len(validation.last_maps) == SCENES
    for got, want in zip(validation.last_maps, expected):
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in MAP_NAMES)
        assert all(torch.isfinite(got[n]).all() and got[n].std() > 1e-3 for n in MAP_NAMES)
    assert set(metrics) == {"photometric_residual", "geometric_degrees", "structural_alignment"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert metrics == consistency_summary(expected)

    # one grid per caption: the five maps in map order, 8-bit, at their offsets; written; sent to TensorBoard
    run = tmp_path / "run" / "validation"
    assert sorted(os.listdir(run)) == ["step_000007_0.png", "step_000007_1.png"]
    assert validation.last_paths == [str(run / "step_000007_0.png"), str(run / "step_000007_1.png")]
    for k, want in enumerate(expected):
        from PIL import Image
        with Image.open(run / f"step_{7:06d}_{k}.png") as written:
            grid = np.asarray(written.convert("RGB"))
        np.testing.assert_array_equal(grid, np.asarray(validation.last_grids[k]))
        assert grid.shape == (LABEL_HEIGHT + SIZE, 5 * SIZE + 4 * GRID_GAP, 3)
        for m, name in enumerate(MAP_NAMES):
            x = m * (SIZE + GRID_GAP)
            np.testing.assert_array_equal(grid[LABEL_HEIGHT:, x:x + SIZE], to_8bit(want[name]), err_msg=f"{k} {name}")
        sheet = np.asarray(validation.last_grid)
        y = k * (LABEL_HEIGHT + SIZE + GRID_GAP)
        np.testing.assert_array_equal(sheet[y:y + LABEL_HEIGHT + SIZE], grid)
    assert [(t, s, f) for t, _, s, f in writer.images] == [("validation/0", 7, "HWC"), ("validation/1", 7, "HWC")]
    for (_, pixels, _, _), grid in zip(writer.images, validation.last_grids):
        np.testing.assert_array_equal(pixels, np.asarray(grid))

    # the base model is untouched (weights and options)
    after = raw.model.diffusion_model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base) and repr(raw.model_options) == raw_options


def test_validation_runs_without_grad_and_without_a_folder_writes_nothing(dataset, models, tmp_path, monkeypatch):
    _, patched = models
    seen = []

    def spy(executor, *args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return executor(*args, **kwargs)
    spied = patched.clone()
    spied.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    monkeypatch.chdir(tmp_path)
    validation = tv.make_validation(spied, TinyVAE(0), dataset, scenes=5, size=SIZE, steps=2)
    with torch.enable_grad():
        validation(1)
    assert len(seen) == 3 * 2 and not any(seen)  # 3 captions (scenes 5 > 3 in the dataset), 2 steps, no grad
    assert validation.last_paths == [] and os.listdir(tmp_path) == []
    assert validation.last_grid.height == 3 * (LABEL_HEIGHT + SIZE) + 2 * GRID_GAP


def test_cancel_stops_validation_at_the_next_step_and_writes_nothing(dataset, models, tmp_path):
    _, patched = models
    calls = []

    def cancel_on_first_call(executor, *args, **kwargs):  # as the UI's Cancel: the flag only
        calls.append(1)
        comfy.model_management.interrupt_current_processing()
        return executor(*args, **kwargs)
    cancelling = patched.clone()
    cancelling.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_cancel",
                                    cancel_on_first_call)
    validation = tv.make_validation(cancelling, TinyVAE(0), dataset, scenes=SCENES, size=SIZE, steps=STEPS,
                                    folder=str(tmp_path))
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            validation(3)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 1 and not (tmp_path / "validation").exists() and validation.last_grid is None


def test_make_validation_refuses_what_cannot_run(dataset, models):
    _, patched = models
    with pytest.raises(ValueError, match="needs the FLUX VAE"):
        tv.make_validation(patched, None, dataset)
    with pytest.raises(ValueError, match="multiples of 16"):
        tv.make_validation(patched, TinyVAE(0), dataset, size=40)
    with pytest.raises(ValueError, match="size is 8; set a multiple of 16"):
        tv.make_validation(patched, TinyVAE(0), dataset, size=8)
    with pytest.raises(ValueError, match="scenes is 0"):
        tv.make_validation(patched, TinyVAE(0), dataset, scenes=0)
    with pytest.raises(ValueError, match="steps is 1.5"):
        tv.make_validation(patched, TinyVAE(0), dataset, steps=1.5)
    with pytest.raises(ValueError, match="guidance is nan; set a finite number"):
        tv.make_validation(patched, TinyVAE(0), dataset, guidance=float("nan"))
    with pytest.raises(ValueError, match="LumiX needs a MODEL"):
        tv.make_validation("not a model", TinyVAE(0), dataset)


def test_a_grid_is_labelled_with_the_caption_where_the_dataset_keeps_it_else_the_scene_id(dataset):
    from types import SimpleNamespace

    assert tv._label(SimpleNamespace(scene_id="scene_3", caption="a sunny kitchen")) == "scene_3: a sunny kitchen"
    assert tv._label(SimpleNamespace(scene_id="scene_3")) == "scene_3"  # a dataset without captions
    assert tv._label(dataset.scenes[0]) == "scene_0: room 0"  # the encoded dataset keeps each caption
