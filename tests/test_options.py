"""The option keys: short, stable, explained, one module without torch; the values shipped before them map to keys."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from lumix_core import options  # noqa: E402
from lumix_core.maps import MAP_NAMES  # noqa: E402

LEGACY_DIR = Path(__file__).resolve().parent / "legacy_workflows"


def test_keys_are_short_identifiers_and_every_key_is_explained():
    for option, choices in options.CHOICES.items():
        for key, help_text in choices.items():
            assert key.isidentifier() and key.islower() and len(key) <= 16, (option, key)
            assert len(help_text) > 10
            assert f"{key}: " in options.tooltip(option)


def test_legacy_values_map_to_existing_keys_and_unknown_values_are_refused():
    for option, legacy in options.LEGACY_VALUES.items():
        for old, key in legacy.items():
            assert key in options.CHOICES[option]
            assert options.option_key(option, old) == key and options.option_key(option, key) == key
    assert options.option_key("held_maps_size", "from the given map (aspect kept, area budget)") == "from_given"
    with pytest.raises(ValueError, match="unknown held_maps_resize 'squash'.*stretch"):
        options.option_key("held_maps_resize", "squash")
    assert options.check_option("output_size", "original") is True
    assert "unknown output_size" in options.check_option("output_size", "big")


def test_every_option_value_in_the_workflows_shipped_before_the_keys_is_accepted():
    seen = set()
    for path in sorted((LEGACY_DIR / "api").glob("*_api.json")):
        for node in json.loads(path.read_text()).values():
            for name, value in node["inputs"].items():
                if name in options.CHOICES and isinstance(value, str):
                    options.option_key(name, value)
                    seen.add((name, value))
    # the prose values the shipped files carried (so the check above is not vacuous)
    assert ("held_maps_guidance", "reference: guidance 1.0, no CFG") in seen
    assert ("depth_convention", "far is bright (LumiX)") in seen and len(seen) >= 6


def test_the_module_and_the_client_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
            "from lumix_core.options import SIZE_EXPLICIT, MAP_NAMES; import lumix_batch.workflow as w;"
            "assert w.EXPLICIT_SIZE == SIZE_EXPLICIT == 'explicit' and w.MAP_NAMES == MAP_NAMES; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(REPO / "scripts")], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    assert options.MAP_NAMES == MAP_NAMES
