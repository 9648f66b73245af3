"""The loader's checkpoint menu and the models/lumix folder, inside a real ComfyUI."""
import os

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import DOUBLE, HIDDEN, SINGLE, extension_module, folder_paths, load_extension, tiny_flux
from tiny_flux import official_state_dict  # noqa: E402

NODES = load_extension()


def menu():
    kind, options = NODES["LumiXTensorLoRALoader"].GET_NODE_INFO_V1()["input"]["required"]["lumix_name"]
    assert kind == "COMBO"
    return options["options"]


@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    """Fresh lumix and loras folders registered for this test only."""
    lumix, loras = tmp_path / "lumix", tmp_path / "loras"
    lumix.mkdir()
    loras.mkdir()
    for name, folder in (("lumix", lumix), ("loras", loras)):
        paths, exts = folder_paths.folder_names_and_paths[name]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(folder)], exts))
        folder_paths.filename_list_cache.pop(name, None)
    yield lumix, loras
    for name in ("lumix", "loras"):
        folder_paths.filename_list_cache.pop(name, None)


def test_the_menu_lists_lumix_checkpoints_only(model_dirs):
    lumix, loras = model_dirs
    (lumix / "lumix.safetensors").write_bytes(b"any file here is offered: the loader checks it when run")
    save_file(official_state_dict(), str(loras / "lumix_in_loras.safetensors"))
    os.mkdir(loras / "sub")
    save_file(official_state_dict(prefix="transformer."), str(loras / "sub" / "prefixed.sft"))
    save_file({"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.zeros(4, 16)},
              str(loras / "style_lora.safetensors"))
    (loras / "broken.safetensors").write_bytes(b"\xff" * 40)
    (loras / "notes.txt").write_text("not a model")
    assert menu() == sorted(["lumix.safetensors", "lumix_in_loras.safetensors", os.path.join("sub", "prefixed.sft")])


def test_the_menu_follows_files_that_change(model_dirs):
    _, loras = model_dirs
    path = loras / "was_style.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    assert "was_style.safetensors" not in menu()
    save_file(official_state_dict(), str(path))  # overwritten by a LumiX checkpoint: size and mtime change
    folder_paths.filename_list_cache.pop("loras", None)
    assert "was_style.safetensors" in menu()


def test_a_listed_loras_checkpoint_loads(model_dirs):
    _, loras = model_dirs
    save_file(official_state_dict(hidden=HIDDEN, R=2, double=DOUBLE, single=SINGLE), str(loras / "mine.safetensors"))
    assert "mine.safetensors" in menu()
    patched = NODES["LumiXTensorLoRALoader"].execute(tiny_flux(seed=3), "mine.safetensors", 1.0, True).result[0]
    settings = extension_module().nodes.patch.lumix_settings(patched)
    assert settings.checkpoint_name == "mine.safetensors" and len(settings.adapters) == DOUBLE + SINGLE


def test_models_lumix_is_created_on_start(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lumix", ([], set()))
    extension_module().nodes.model_nodes.register_model_folder()
    folder = tmp_path / "models" / "lumix"
    assert folder.is_dir()
    paths, exts = folder_paths.folder_names_and_paths["lumix"]
    assert paths == [str(folder)] and {".safetensors", ".sft"} <= exts


def test_an_unwritable_models_folder_is_reported_not_fatal(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    monkeypatch.setattr(folder_paths, "models_dir", str(blocker))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lumix", ([], set()))
    extension_module().nodes.model_nodes.register_model_folder()
    assert "could not create" in caplog.text and "models/loras" in caplog.text


def test_the_menu_is_built_safely_from_the_server_and_worker_threads_at_once(model_dirs, monkeypatch):
    """ComfyUI calls define_schema from several threads: the shared record of which loras are LumiX files
    must not be read while another thread changes it (a header read is slowed here to widen the window)."""
    import threading
    import time
    _, loras = model_dirs
    for i in range(6):
        save_file(official_state_dict() if i % 2 else {"x": torch.zeros(2)}, str(loras / f"f{i}.safetensors"))
    import sys
    model_nodes = sys.modules[extension_module().__name__ + ".nodes.model_nodes"]
    sniff = type(model_nodes._LORA_FILES).__module__
    real = sys.modules[sniff].is_lumix_file

    inside, most = [0], [0]  # threads inside a header read of the shared record at once

    def slow(path):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.002)
        try:
            return real(path)
        finally:
            inside[0] -= 1
    monkeypatch.setattr(sys.modules[sniff], "is_lumix_file", slow)
    errors, results = [], []

    def build(k):
        try:
            for j in range(15):
                folder_paths.filename_list_cache.pop("loras", None)
                os.utime(loras / f"f{(k + j) % 6}.safetensors", ns=(j, j))  # a changed file is read again
                results.append(model_nodes.checkpoint_choices())
        except Exception as exc:  # noqa: BLE001  (any error is the failure this test looks for)
            errors.append(exc)
    threads = [threading.Thread(target=build, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and most[0] == 1
    assert all(r == ["f1.safetensors", "f3.safetensors", "f5.safetensors"] for r in results)
