"""The command-line trainer's TOML config: the shipped paper config, documentation of every setting,
path handling and every error path."""
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from lumix_core.training import TrainConfig
from lumix_core.training.run_config import SETTINGS, RunConfigError, load_run_config, parse_run_config

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "lumix_paper.toml"
MINIMAL = {"model": {"flux": "flux1-dev.safetensors"}, "data": {"root": "data"}}


def test_paper_config_has_the_papers_values():
    cfg = load_run_config(PAPER)
    t = cfg.train
    assert (t.rank, t.optimizer, t.learning_rate, t.batch_size, t.steps, t.resolution) == (8, "prodigy", 1.0, 16, 10000, 512)
    assert t.gradient_checkpointing and t.alpha == 1.0 and t.held_map_probability == 0.0
    assert cfg.output_dir == (REPO / "runs" / "lumix_paper").resolve()  # relative to the config's folder
    assert cfg.cache_dir == cfg.output_dir / "cache"
    assert cfg.state_path().name == "lumix_lora.state.pt"


def test_paper_config_shows_and_comments_every_setting():
    text = PAPER.read_text()
    data = tomllib.loads(text)
    for section, known in SETTINGS.items():
        shown = set(data.get(section, {}))
        if section == "model":
            shown.add("flux_config")  # commented out: FLUX.1-dev needs none
            assert re.search(r"^# flux_config = ", text, re.M)
        assert shown == set(known), section
    assert set(data["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    for line in text.splitlines():  # each setting line says what it does
        if re.match(r"^[a-z_]+ = ", line):
            assert "#" in line, line


def test_defaults_and_path_resolution(tmp_path):
    model = tmp_path / "models" / "flux.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"x")
    cfg = parse_run_config({"model": {"flux": "models/flux.safetensors", "vae": "ae.safetensors"},
                            "data": {"root": "data", "cache_dir": "/abs/cache"}}, base=tmp_path)
    assert cfg.model["flux"] == str(model)  # an existing relative path becomes absolute
    assert cfg.model["vae"] == "ae.safetensors"  # a bare name stays for ComfyUI's folder_paths
    assert cfg.data["root"] == str(tmp_path / "data") and str(cfg.cache_dir) == "/abs/cache"
    assert cfg.train == TrainConfig() and cfg.run == {"device": "auto", "timeout_s": 600.0, "progress_every": 10}


@pytest.mark.parametrize("data, message", [
    ({**MINIMAL, "optim": {}}, r"unknown section\(s\) \['optim'\]"),
    ({**MINIMAL, "run": {"devices": "cpu"}}, r"unknown setting\(s\) \['devices'\] in \[run\]"),
    ({"model": {}, "data": {"root": "d"}}, r"\[model\] flux is required"),
    ({"model": {"flux": "f"}}, r"\[data\] root is required"),
    ({**MINIMAL, "run": {"timeout_s": "long"}}, r"\[run\] timeout_s must be a float"),
    ({**MINIMAL, "run": {"device": "tpu"}}, r"device must be auto, cuda or cpu"),
    ({**MINIMAL, "run": {"timeout_s": 0}}, r"timeout_s must be positive"),
    ({**MINIMAL, "model": {"flux": "f", "weight_dtype": "int4"}}, r"weight_dtype must be one of"),
    ({**MINIMAL, "validation": {"size": 100}}, r"size a positive multiple of 16"),
    ({**MINIMAL, "train": {"rank": 0}}, r"\[train\] training setting: rank must be at least 1"),
    ({**MINIMAL, "train": {"learning_rat": 1.0}}, r"\[train\] unknown training setting"),
    ({**MINIMAL, "model": "flux1-dev"}, r"\[model\] must be a table"),
])
def test_bad_configs_say_what_is_wrong(data, message):
    with pytest.raises(RunConfigError, match=message):
        parse_run_config(data, "my.toml")


def test_unreadable_config_files(tmp_path):
    with pytest.raises(RunConfigError, match="no config file at"):
        load_run_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nflux = 1")
    with pytest.raises(RunConfigError, match="is not valid TOML"):
        load_run_config(bad)
