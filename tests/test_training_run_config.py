"""The command-line trainer's TOML config: the shipped paper config, documentation of every setting,
path handling and every error path."""
import dataclasses
import os
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
    assert cfg.cache_dir == Path(cfg.data["root"]) / ".lumix_cache"  # where the dataset node caches too
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
    ({**MINIMAL, "run": {"timeout_s": "long"}}, r"\[run\] timeout_s must be a finite number, got 'long'"),
    ({**MINIMAL, "run": {"device": "tpu"}}, r"device must be auto, cuda or cpu"),
    ({**MINIMAL, "run": {"timeout_s": 0}}, r"timeout_s must be positive"),
    ({**MINIMAL, "model": {"flux": "f", "weight_dtype": "int4"}}, r"weight_dtype must be one of"),
    ({**MINIMAL, "validation": {"size": 100}}, r"size a positive multiple of 16"),
    ({**MINIMAL, "train": {"rank": 0}}, r"\[train\] training setting: rank must be a whole number in \[1, 64\], got 0"),
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


@pytest.mark.parametrize("train, message", [
    # each one, before the schema, trained or crashed (see issue 20): now refused with the allowed range
    ({"steps": 1.5}, r"steps must be a whole number in \[1, 1000000\], got 1\.5$"),
    ({"steps": True}, r"steps must be a whole number .*, got True$"),
    ({"batch_size": 1.0}, r"batch_size must be a whole number .*, got 1\.0$"),
    ({"guidance": float("nan")}, r"guidance must be a finite number in \[0, 100\], got nan$"),
    ({"learning_rate": float("inf")}, r"learning_rate must be a finite number in \[1e-08, 10\], got inf$"),
    ({"rank": 65}, r"rank must be a whole number in \[1, 64\], got 65$"),  # the loader's MAX_CHECKPOINT_RANK
    ({"alpha": 0}, r"alpha must be a finite number in \(0, 10000\], got 0$"),  # the loader's MAX_ALPHA
    ({"alpha": 20000.0}, r"alpha must be a finite number in \(0, 10000\], got 20000\.0$"),
    ({"optimizer": "sgd"}, r"optimizer must be one of 'adamw', 'prodigy', got 'sgd'$"),
    ({"flip": 1}, r"flip must be true or false, got 1$"),
    ({"batch_size": 3, "grad_accumulation": 2}, r"batch_size 3 must be a multiple of grad_accumulation 2$"),
])
def test_train_settings_follow_one_schema(train, message):
    with pytest.raises(RunConfigError, match=r"^my\.toml: \[train\] training setting: " + message):
        parse_run_config({**MINIMAL, "train": train}, "my.toml")
    with pytest.raises(ValueError, match=message):  # the node builds the same TrainConfig
        TrainConfig(**train)


def test_the_schema_is_the_dataclass_and_its_ranges_are_the_loaders():
    from lumix_core.checkpoint import MAX_ALPHA, MAX_CHECKPOINT_RANK
    from lumix_core.training.config import SETTING, SETTINGS
    fields = dataclasses.fields(TrainConfig)
    assert [f.name for f in fields] == [s.name for s in SETTINGS]
    assert all(f.default == SETTING[f.name].default and type(f.default) is SETTING[f.name].kind for f in fields)
    assert (SETTING["rank"].low, SETTING["rank"].high) == (1, MAX_CHECKPOINT_RANK)
    assert (SETTING["alpha"].high, SETTING["alpha"].low_open) == (MAX_ALPHA, True)
    assert TrainConfig(rank=MAX_CHECKPOINT_RANK, alpha=MAX_ALPHA, learning_rate=1).learning_rate == 1.0
    assert isinstance(TrainConfig(learning_rate=1).learning_rate, float)  # TOML 1 for 1.0 is fine


@pytest.mark.parametrize("section, message", [
    ({"validation": {"steps": True}}, r"\[validation\] steps must be a whole number, got True"),
    ({"run": {"timeout_s": float("inf")}}, r"\[run\] timeout_s must be a finite number, got inf"),
])
def test_other_sections_refuse_bools_for_numbers_and_non_finite_floats(section, message):
    with pytest.raises(RunConfigError, match=message):
        parse_run_config({**MINIMAL, **section}, "my.toml")


@pytest.mark.parametrize("name, message", [
    ("", r"\[output\] the output name '' is empty"),
    ("  ", r"is empty"),
    ("../x", r"must be a plain file name, not a path"),
    ("a/b", r"not a path"),
    ("..", r"not a path"),
    (".hidden", r"starts with '\.'"),
    ("two\nlines", r"control characters \('\\n'\)"),
    ("nul\x00", r"control characters \('\\x00'\)"),
    # the longest name is the EMA twin of the last step checkpoint (RunFiles checks it whether EMA is on or not)
    ("x" * 230, r"too long: the run writes '\.x+_step1000000_ema\.safetensors\.xxxxxxxx\.part' \(273 bytes\), over "
                r"this file system's 255-byte limit for a file name; use a name of at most 212 bytes"),
])
def test_output_names_are_checked_before_anything_runs(tmp_path, name, message):
    with pytest.raises(RunConfigError, match=message):
        parse_run_config({**MINIMAL, "output": {"dir": str(tmp_path), "name": name},
                          "train": {"steps": 1000000}}, "my.toml")


def test_the_longest_allowed_name_trains_to_the_last_step_name(tmp_path):
    """212 bytes is the limit for a 1M-step run: its longest temporary (the last step's EMA twin) is
    exactly 255 bytes, and writes."""
    name = "y" * 212
    cfg = parse_run_config({**MINIMAL, "output": {"dir": str(tmp_path), "name": name}, "train": {"steps": 1000000}})
    files = cfg.files()
    longest = os.path.join(str(tmp_path), f".{name}_step1000000_ema.safetensors.abcdefgh.part")
    assert len(os.path.basename(longest).encode()) == 255
    open(longest, "w").close()  # the file system takes it
    assert files.step_ema(1000000) == os.path.join(str(tmp_path), f"{name}_step1000000_ema.safetensors")
    with pytest.raises(RunConfigError, match="at most 212 bytes"):
        parse_run_config({**MINIMAL, "output": {"dir": str(tmp_path), "name": name + "y"}, "train": {"steps": 1000000}})
    # with fewer steps the step number is shorter, so a longer name fits (6 digits up to 999999)
    parse_run_config({**MINIMAL, "output": {"dir": str(tmp_path), "name": name + "y"}, "train": {"steps": 999999}})


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    for folder in (blocker, blocker / "below"):
        with pytest.raises(RunConfigError, match=r"\[output\] the output folder .* cannot be created: .*taken is a file"):
            parse_run_config({**MINIMAL, "output": {"dir": str(folder)}}, "my.toml")
