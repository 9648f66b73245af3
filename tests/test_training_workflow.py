"""The shipped training-then-sampling workflow is wired as intended (its files match the builder: test_workflows)."""
import sys

from workflow_files import WORKFLOW_DIR

sys.path.insert(0, str(WORKFLOW_DIR.parent / "scripts"))
import build_workflows as bw  # noqa: E402


def test_the_trained_model_feeds_the_sampler_and_the_released_loader_is_gone():
    api = bw.to_api(bw.training_then_sampling())
    by_type = {}
    for node_id, node in api.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    assert "LumiXTensorLoRALoader" not in by_type
    trainer = by_type["LumiXTrainer"][0]
    assert api[by_type["LumiXSampler"][0]]["inputs"]["model"] == [trainer, 0]
    assert api[trainer]["inputs"]["model"] == [by_type["UNETLoader"][0], 0]
    assert api[trainer]["inputs"]["dataset"] == [by_type["LumiXTrainingDataset"][0], 0]
    assert any(api[p]["inputs"]["images"] == [trainer, 1] for p in by_type["PreviewImage"])
    assert api[trainer]["inputs"]["gradient_checkpointing"] is True and api[trainer]["inputs"]["resume"] is False
