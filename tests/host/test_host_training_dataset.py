"""LumiX Training Dataset inside a real ComfyUI: it reads only subfolders of ComfyUI's input folder and
registered `lumix_datasets` folders, writes its cache only inside the dataset folder or under output/,
never follows links out of them, never names anything outside them, and keys text by tokenizer settings."""
import hashlib
import os

import pytest
import torch

from comfy_host import TinyCLIP, TinyVAE, extension_module, folder_paths, load_extension  # first: skips without ComfyUI
from training_fixtures import make_reference_dataset, make_scene_folder

NODES = load_extension()
Dataset = NODES["LumiXTrainingDataset"]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """ComfyUI's input and output folders set to the test's own; a private folder beside them."""
    inputs, outputs, private = tmp_path / "input", tmp_path / "output", tmp_path / "private"
    for folder in (inputs, outputs, private):
        folder.mkdir()
    before = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    folder_paths.set_input_directory(str(inputs))
    folder_paths.set_output_directory(str(outputs))
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "lumix_datasets", raising=False)
    make_scene_folder(private, "bank_statement_2025", seed=1, prompt="secret")
    make_reference_dataset(str(private / "secret"), ["bank_statement_2025"])
    yield tmp_path
    folder_paths.set_input_directory(before[0])
    folder_paths.set_output_directory(before[1])


def run(folder, cache_folder="", clip=None):
    with torch.inference_mode():
        out = Dataset.execute(folder, TinyVAE(0), clip or TinyCLIP(), 32, False, cache_folder)
    return out.result[0], out.result[1]


def folder_options():
    spec = Dataset.INPUT_TYPES()["required"]["folder"]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def assert_private(message, tmp_path):
    assert str(tmp_path) not in message and "private" not in message and "bank_statement" not in message, message


def test_the_folder_is_a_list_of_input_subfolders_and_registered_datasets(roots, monkeypatch):
    inputs = roots / "input"
    for i in range(2):
        make_scene_folder(inputs / "rooms", f"scene_{i}", seed=i)
    make_reference_dataset(str(inputs / "sets" / "hypersim"), ["a"])
    (inputs / "plain" / "deeper").mkdir(parents=True)
    (inputs / ".hidden").mkdir()
    os.symlink(roots / "private", inputs / "linked_out")
    registered = roots / "datasets"
    make_scene_folder(registered / "kitchens", "k0")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lumix_datasets", ([str(registered)], set()))
    options = folder_options()
    assert options == ["lumix_dataset", "plain", "plain/deeper", "rooms", "sets", "sets/hypersim",
                       "kitchens [lumix_datasets]"]
    # the dataset folders' own map and scene folders are not offered, nor links, hidden folders or paths
    data, summary = run("rooms")
    assert len(data) == 2 and "[scene-folders layout, input/rooms]" in summary
    assert data.cache_label == "input/rooms/.lumix_cache" and (inputs / "rooms" / ".lumix_cache" / "latents").is_dir()
    data, summary = run("sets/hypersim")
    assert len(data) == 1 and "input/sets/hypersim" in summary
    data, summary = run("kitchens [lumix_datasets]")
    assert len(data) == 1 and "kitchens [lumix_datasets]" in summary and str(roots) not in summary
    # a registered folder that is itself a dataset is offered by its own name
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "lumix_datasets", ([str(registered / "kitchens")], set()))
    assert "kitchens [lumix_datasets]" in folder_options()
    assert len(run("kitchens [lumix_datasets]")[0]) == 1


@pytest.mark.parametrize("folder", ["ABSOLUTE", "../private", "rooms/../../private", "~", "~/private",
                                    "linked_out", "linked_out/bank_statement_2025", "nothing_here",
                                    "../private/bank_statement_2025 [lumix_datasets]", "some_name [lumix_datasets]"])
def test_folders_outside_the_allowed_roots_are_refused_without_naming_them(roots, folder):
    inputs = roots / "input"
    make_scene_folder(inputs / "rooms", "scene_0")
    os.symlink(roots / "private", inputs / "linked_out")
    folder = str(roots / "private") if folder == "ABSOLUTE" else folder
    before = files_under(roots)
    with pytest.raises(ValueError) as err:
        run(folder)
    message = str(err.value)
    assert message.startswith("LumiX Training Dataset: ")
    assert_private(message, roots)
    if folder.startswith("linked_out"):
        assert "input/linked_out leads outside ComfyUI's input folder" in message and "lumix_datasets" in message
        with pytest.raises(ValueError) as other:  # no oracle: what exists behind the link changes nothing
            run("linked_out/no_such_folder")
        assert str(other.value) == message
    elif folder == "nothing_here":
        assert "input/nothing_here does not exist" in message
    else:
        assert "subfolders of ComfyUI/input/" in message
    assert files_under(roots) == before  # nothing read into a cache, nothing created


@pytest.mark.parametrize("cache_folder", ["ABSOLUTE", "../private/cache", "~/cache", "linked_cache"])
def test_cache_folders_outside_comfyui_output_are_refused(roots, cache_folder):
    make_scene_folder(roots / "input" / "rooms", "scene_0")
    os.symlink(roots / "private", roots / "output" / "linked_cache")
    cache_folder = str(roots / "private" / "cache") if cache_folder == "ABSOLUTE" else cache_folder
    with pytest.raises(ValueError) as err:
        run("rooms", cache_folder)
    assert "cache_folder" in str(err.value)
    assert_private(str(err.value), roots)
    assert files_under(roots / "private") == ["bank_statement_2025/" + f for f in files_under(roots / "private" / "bank_statement_2025")] + \
        ["secret/" + f for f in files_under(roots / "private" / "secret")]
    assert not (roots / "input" / "rooms" / ".lumix_cache").exists()


def test_a_named_cache_goes_under_output_and_a_linked_default_cache_is_refused(roots):
    make_scene_folder(roots / "input" / "rooms", "scene_0")
    data, summary = run("rooms", "lumix_cache/rooms")
    assert data.cache_label == "output/lumix_cache/rooms" and "cache: output/lumix_cache/rooms" in summary
    assert (roots / "output" / "lumix_cache" / "rooms" / "latents").is_dir()
    assert not (roots / "input" / "rooms" / ".lumix_cache").exists()
    os.symlink(roots / "private", roots / "input" / "rooms" / ".lumix_cache")
    with pytest.raises(ValueError, match=r"input/rooms/\.lumix_cache leads outside the dataset folder") as err:
        run("rooms")
    assert_private(str(err.value), roots)


def test_links_inside_a_dataset_to_private_files_are_not_read_nor_named(roots):
    inputs = roots / "input"
    make_scene_folder(inputs / "rooms", "scene_0")
    os.symlink(roots / "private" / "bank_statement_2025", inputs / "rooms" / "scene_1")
    ref = inputs / "ref"
    make_reference_dataset(str(ref), ["mine"])
    os.symlink(roots / "private" / "secret" / "color" / "bank_statement_2025_color.png", ref / "color" / "x_color.png")
    data, summary = run("rooms")
    assert len(data) == 1 and "scene_1: link leaving the dataset folder" in summary
    assert_private(summary, roots)
    data, summary = run("ref")
    assert len(data) == 1 and "x: link leaving the dataset folder" in summary
    assert_private(summary, roots)
    only_links = inputs / "only_links"
    only_links.mkdir()
    os.symlink(roots / "private" / "bank_statement_2025", only_links / "scene")
    with pytest.raises(ValueError) as err:
        run("only_links")
    assert "no usable scene in input/only_links" in str(err.value)
    assert_private(str(err.value), roots)


def test_the_text_cache_follows_the_tokenizer_settings(roots):
    from comfy_extras.nodes_cond import T5TokenizerOptions

    make_scene_folder(roots / "input" / "rooms", "scene_0", prompt="a hall")
    plain = TinyCLIP()
    padded = T5TokenizerOptions.execute(plain, 0, 512)
    padded = padded.result[0] if hasattr(padded, "result") else padded[0]
    assert padded.tokenizer_options["t5xxl_min_length"] == 512
    a, _ = run("rooms", clip=plain)
    b, _ = run("rooms", clip=padded)
    c, _ = run("rooms", clip=plain)
    assert a.scenes[0].text != b.scenes[0].text and a.empty_text != b.empty_text
    assert a.scenes[0].text == c.scenes[0].text and a.scenes[0].latents == b.scenes[0].latents
    assert len(os.listdir(roots / "input" / "rooms" / ".lumix_cache" / "text")) == 4  # 2 captions x 2 settings
    cache_keys = __import__(extension_module().__name__ + ".nodes.dataset_cache_keys", fromlist=["caption_identity"])
    layer = plain.clone()
    layer.layer_idx = -2  # CLIPSetLastLayer
    assert cache_keys.caption_identity(layer)("x") != cache_keys.caption_identity(plain)("x")
    from types import SimpleNamespace

    def with_lora(strength, values):  # a LoRA on the text encoder, as ModelPatcher.add_patches stores it
        clip = plain.clone()
        clip.patcher = SimpleNamespace(patches={"t5.weight": [(strength, (values,), 1.0, None, None)]})
        return cache_keys.caption_identity(clip)("x")
    keys = {with_lora(1.0, torch.ones(3)), with_lora(0.5, torch.ones(3)), with_lora(1.0, torch.zeros(3)),
            cache_keys.caption_identity(plain)("x")}
    assert len(keys) == 4 and with_lora(1.0, torch.ones(3)) == with_lora(1.0, torch.ones(3))


def test_damaged_cache_files_are_rebuilt_by_the_node(roots):
    from safetensors.torch import save_file

    make_scene_folder(roots / "input" / "rooms", "scene_0", width=48, height=32)
    data, _ = run("rooms")
    save_file({"latents": torch.zeros(5, 16, 2, 2)}, data.scenes[0].latents)  # the tester's 2x2 latents
    from lumix_core.training import TrainConfig
    with pytest.raises(ValueError, match=r"input/rooms/\.lumix_cache/latents/.*shape \[5, 16, 2, 2\], expected "
                                         r"\[5, 16, 4, 6\]"):
        data.example(0, torch.Generator().manual_seed(0), TrainConfig(resolution=32))  # CacheError (the node's copy)
    again, summary = run("rooms")
    assert "1 damaged cache file(s) encoded again" in summary
    assert again.example(0, torch.Generator().manual_seed(0), TrainConfig(resolution=32)).latents.shape == (5, 16, 4, 4)
    assert hashlib.sha256(open(again.scenes[0].latents, "rb").read()).hexdigest()  # a readable file again


class TokenizingCLIP:
    """ComfyUI's own CLIP.tokenize and set_tokenizer_option over its real FLUX tokenizer (CLIP-L + T5-XXL
    vocabularies ship with ComfyUI; no weights needed); encoding records the tokens it got."""

    def __init__(self):
        import comfy.sd
        from comfy.text_encoders.flux import FluxTokenizer

        self.tokenizer, self.tokenizer_options, self.layer_idx, self.seen = FluxTokenizer(), {}, None, []
        self.tokenize = comfy.sd.CLIP.tokenize.__get__(self)
        self.set_tokenizer_option = comfy.sd.CLIP.set_tokenizer_option.__get__(self)

    def encode_from_tokens_scheduled(self, tokens):
        self.seen.append(tokens)
        return [[torch.zeros(1, len(tokens["t5xxl"][0]), 4), {"pooled_output": torch.zeros(1, 3)}]]


def test_real_flux_tokens_key_the_cache_and_the_command_line_pads_t5_to_512(monkeypatch):
    import sys
    from conftest import REPO

    cache_keys = __import__(extension_module().__name__ + ".nodes.dataset_cache_keys", fromlist=["caption_identity"])
    clip = TokenizingCLIP()
    default = cache_keys.caption_identity(clip)("a red chair")
    assert len(clip.tokenize("a red chair")["t5xxl"][0]) == 256            # ComfyUI's FLUX default
    clip.set_tokenizer_option("t5xxl_min_length", 512)
    assert len(clip.tokenize("a red chair")["t5xxl"][0]) == 512
    assert cache_keys.caption_identity(clip)("a red chair") != default

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import lumix_comfy_models
    lumix_comfy_models.import_extension()
    run_module = __import__("lumix_training_run")
    loaded = TokenizingCLIP()
    monkeypatch.setattr(run_module.comfy_models, "load_text_encoders", lambda clip_l, t5xxl: loaded)
    encoders = run_module.LazyEncoders(type("Cfg", (), {"model": {"clip_l": "c", "t5xxl": "t"}})())
    context, pooled = encoders.encode_text("a red chair")
    assert context.shape == (512, 4) and len(loaded.seen[0]["t5xxl"][0]) == 512   # the reference's padding
    assert "lumix_training_run" in sys.modules
