"""The shipped training-then-sampling workflow: up to date with its description, wired as intended."""
import json
import sys

from workflow_files import WORKFLOW_DIR

sys.path.insert(0, str(WORKFLOW_DIR.parent / "scripts"))
import workflow_training as wt  # noqa: E402


def test_files_match_the_description():
    assert json.loads((WORKFLOW_DIR / f"{wt.NAME}.json").read_text()) == json.loads(json.dumps(wt.ui_graph()))
    assert json.loads((WORKFLOW_DIR / f"{wt.NAME}_api.json").read_text()) == json.loads(json.dumps(wt.api_graph()))


def test_the_trained_model_feeds_the_sampler_and_the_released_loader_is_gone():
    api = wt.api_graph()
    by_type = {}
    for node_id, node in api.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    assert "LumiXTensorLoRALoader" not in by_type
    trainer = by_type["LumiXTrainer"][0]
    shift = by_type["ModelSamplingFlux"][0]
    assert api[shift]["inputs"]["model"] == [trainer, 0]
    assert api[by_type["LumiXSampler"][0]]["inputs"]["model"] == [shift, 0]
    assert api[trainer]["inputs"]["dataset"] == [by_type["LumiXTrainingDataset"][0], 0]
    assert any(api[p]["inputs"]["images"] == [trainer, 1] for p in by_type["PreviewImage"])
    assert api[trainer]["inputs"]["gradient_checkpointing"] is True and api[trainer]["inputs"]["resume"] is False
