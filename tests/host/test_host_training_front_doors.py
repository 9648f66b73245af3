"""The two front doors of training share one session builder (nodes/training_session.py) and one
dataset cache: the same tiny FLUX file, dataset and settings, trained once through the LumiX Trainer
node and once through `python scripts/lumix_train.py`, give the same adapters, log and metadata; and
what one door encoded into <root>/.lumix_cache the other reads without encoding again."""
import json
import shutil

from pathlib import Path

import pytest
import torch

from comfy_host import run_dataset_node, load_extension, lumix_dir  # noqa: F401  (skips without ComfyUI)
from distributed_fixture import (FLUX_CONFIG, FileBackedCLIP, FileBackedVAE, build_shared, cli_cache_identity,
                                 run_trainer, write_config, write_encoder_files)
from lumix_comfy_models import load_flux

from lumix_core import load_checkpoint

NODES = load_extension()
TrainerNode = NODES["LumiXTrainer"]
# what the test config file sets (write_config), plus one setting each front door once chose for itself
SETTINGS = dict(steps=4, batch_size=2, optimizer="adamw", learning_rate=1e-4, save_every=2, log_every=1, seed=3,
                max_grad_norm=0.0, rank=3, alpha=2.0)
# the options FLUX LoRA trainers give their users, on both doors
OPTIONS = dict(SETTINGS, save_every=1, keep_last=1, ema_decay=0.9, lr_schedule="cosine", lr_min_ratio=0.1,
               warmup_steps=1, prefetch=2)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return build_shared(tmp_path_factory.mktemp("front_doors"))


def node_dataset(shared, folder="data"):
    """The LumiX Training Dataset node over <shared>/<folder>, given encoders that hold the config's files."""
    model = shared["model"]
    vae, clip = FileBackedVAE(model["vae"]), FileBackedCLIP(model["clip_l"], model["t5xxl"])
    data = run_dataset_node(Path(shared["data"]["root"]).parent, folder, vae, clip, shared["resolution"]).result[0]
    return data, vae.encode_calls + clip.encode_calls


def records(path):
    return [json.loads(line) for line in open(path)]


def same_factors(a, b):
    assert a.adapters.keys() == b.adapters.keys()
    worst = 0.0
    for block, factors in a.adapters.items():
        for name, f in factors.items():
            for g in ("G1", "G2", "G3"):
                worst = max(worst, float((getattr(f, g) - getattr(b.adapters[block][name], g)).abs().max()))
    return worst


@pytest.mark.parametrize("settings", [SETTINGS, OPTIONS], ids=["settings", "options"])
def test_node_and_command_line_train_the_same_adapters(shared, tmp_path, lumix_dir, settings):
    SETTINGS = settings  # noqa: N806
    out = tmp_path / "cli"
    done = run_trainer(write_config(tmp_path, shared, out, **SETTINGS))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    model = load_flux(shared["model"]["flux"], "default", FLUX_CONFIG)
    data, encoded = node_dataset(shared)
    assert encoded == 0  # every latent and embedding came from the cache the command line uses
    with torch.inference_mode():
        TrainerNode.execute(model, data, "front", **SETTINGS)

    cli_log, node_log = records(out / "log.jsonl"), records(lumix_dir / "front_training" / "log.jsonl")
    assert [r["step"] for r in cli_log] == [r["step"] for r in node_log] == [1, 2, 3, 4]
    for a, b in zip(cli_log, node_log):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * max(1.0, abs(a["loss"])) and a["lr"] == b["lr"], (cli_log, node_log)

    cli, node = load_checkpoint(str(out / "tiny.safetensors")), load_checkpoint(str(lumix_dir / "front.safetensors"))
    assert (cli.rank, cli.alpha, node.rank, node.alpha) == (3, 2.0, 3, 2.0)
    assert json.loads(cli.metadata["training_config"]) == json.loads(node.metadata["training_config"])
    worst = same_factors(cli, node)
    g3 = [f.G3 for block in node.adapters.values() for f in block.values()]
    assert any(g.abs().max() > 1e-5 for g in g3)  # trained away from G3 = 0, so the comparison means something
    # one process each; only the thread count differs (AdamW turns float32 rounding into ~1e-3 x lr, see
    # distributed_fixture.write_config)
    assert worst <= 1e-6, worst
    if settings is OPTIONS:  # the same files on both doors: one step checkpoint kept, EMA twins, cosine lrs
        work = lumix_dir / "front_training"
        assert sorted(p.name for p in out.glob("*.safetensors")) == [
            "tiny.safetensors", "tiny_ema.safetensors", "tiny_step000003.safetensors", "tiny_step000003_ema.safetensors"]
        assert sorted(p.name for p in work.glob("*.safetensors")) == [
            "front_step000003.safetensors", "front_step000003_ema.safetensors"]  # step 4 is the final
        assert (lumix_dir / "front_ema.safetensors").is_file()
        ema_cli, ema_node = (load_checkpoint(str(p)) for p in (out / "tiny_ema.safetensors", lumix_dir / "front_ema.safetensors"))
        assert ema_cli.metadata["weights"] == "ema" and same_factors(ema_cli, ema_node) <= 1e-6
        assert same_factors(ema_cli, cli) > 1e-6  # the EMA is not the raw weights
        # warm-up 1 step, then cosine from lr to 0.1 lr over the remaining 3 steps (float64, written here)
        import math
        want = [1e-4] + [1e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3))) for k in range(1, 4)]
        assert [r["lr"] for r in records(out / "log.jsonl")] == pytest.approx(want, rel=1e-12)



def test_what_the_node_encoded_the_command_line_reads_without_loading_an_encoder(shared, tmp_path):
    root = Path(shared["data"]["root"])
    fresh = root.parent / "data_fresh"
    shutil.copytree(root, fresh, ignore=shutil.ignore_patterns(".lumix_cache"))
    _, encoded = node_dataset(shared, "data_fresh")
    assert encoded == 4 + 4 + 1  # latents of 4 scenes, 4 captions, the empty caption
    assert len(list((fresh / ".lumix_cache" / "latents").iterdir())) == 4
    # the encoder files are tiny stand-ins ComfyUI cannot load: the run succeeds only from the cache
    out = tmp_path / "cli"
    config = write_config(tmp_path, {**shared, "data": {"root": str(fresh)}}, out, steps=1, save_every=0)
    done = run_trainer(config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "dataset: 4 scene(s) used, 0 skipped" in done.stdout and (out / "tiny.safetensors").is_file()


def test_the_cache_key_follows_the_encoder_files_content_not_their_names(shared, tmp_path):
    same_name = dict(shared["model"])
    image, text, _ = cli_cache_identity(same_name)
    other = write_encoder_files(tmp_path, seed=1)
    for role in ("vae", "clip_l", "t5xxl"):
        shutil.copyfile(other[role], tmp_path / "swapped")  # same name and size, other weights
        image2, text2, _ = cli_cache_identity({**same_name, role: str(tmp_path / "swapped")})
        if role == "vae":  # latents follow the VAE only, embeddings the text encoders only
            assert image2 != image and text2 == text
        else:
            assert image2 == image and text2 != text
            assert [p for p in text2.split(";") if not p.startswith(role + "=")] == \
                   [p for p in text.split(";") if not p.startswith(role + "=")]  # only that encoder's part changed
    copy = tmp_path / "copy_of_vae.safetensors"
    shutil.copyfile(same_name["vae"], copy)  # another name, the same content
    assert cli_cache_identity({**same_name, "vae": str(copy)})[:2] == (image, text)


def test_the_node_offers_the_training_settings_with_the_schema_s_defaults_and_ranges():
    from lumix_core.training.config import SETTING
    spec = TrainerNode.INPUT_TYPES()
    inputs = {**spec["required"], **spec.get("optional", {})}
    on_node = {"steps", "rank", "alpha", "optimizer", "learning_rate", "batch_size", "grad_accumulation", "warmup_steps",
               "lr_schedule", "lr_min_ratio", "ema_decay", "max_grad_norm", "timestep_sampling", "guidance",
               "held_map_probability", "caption_dropout", "seed", "gradient_checkpointing", "prefetch", "save_every",
               "keep_last", "validate_every", "keep_best", "best_metric"}
    assert on_node <= set(inputs) and on_node <= set(SETTING)
    for name in on_node:
        setting, (kind, options) = SETTING[name], (inputs[name][0], inputs[name][1] if len(inputs[name]) > 1 else {})
        assert options.get("default") == setting.default, name
        if setting.choices is not None:
            assert list(setting.choices) == (kind if isinstance(kind, list) else options.get("options")), name
        elif setting.kind in (int, float):
            assert options["min"] == setting.low, name
            assert options["max"] == setting.high or (setting.high_open and options["max"] < setting.high), name
    # what the node does not offer is the dataset's (resolution, flip) or an expert setting left at its default
    assert set(SETTING) - on_node == {"resolution", "flip", "weight_decay", "logit_mean", "logit_std", "log_every"}
    added = [n for n in ("alpha", "lr_schedule", "lr_min_ratio", "ema_decay", "keep_last", "keep_best", "best_metric",
                         "prefetch")]
    assert all(n in spec["optional"] for n in added)  # older workflows and API prompts lack them: optional
