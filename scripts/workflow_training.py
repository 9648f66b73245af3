"""The training-then-sampling workflow, described with scripts/build_workflows.py's node list.

    python scripts/workflow_training.py      # writes workflows/lumix_train_then_sample{,_api}.json

`training_then_sampling()` returns the node list, `ui_graph()` / `api_graph()` the two formats;
TRAINING_SOCKETS lists the training nodes' input sockets for build_workflows.SOCKETS.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_workflows as bw  # noqa: E402

NAME = "lumix_train_then_sample"
DATASET_FOLDER = "lumix_dataset"
OUTPUT_NAME = "lumix_trained"
TRAINING_SOCKETS = {
    "LumiXTrainingDataset": [("vae", "VAE"), ("clip", "CLIP")],
    "LumiXTrainer": [("model", "MODEL"), ("dataset", "LUMIX_TRAINING_DATA"), ("vae", "VAE")],
}
# Widget values in the order of the trainer node's inputs (the paper's choices are in the note).
TRAINER_WIDGETS = {
    "output_name": OUTPUT_NAME, "steps": 1000, "rank": 8, "optimizer": "adamw", "learning_rate": 1e-4,
    "batch_size": 1, "grad_accumulation": 1, "warmup_steps": 50, "max_grad_norm": 1.0,
    "timestep_sampling": "logit_normal", "guidance": 1.0, "held_map_probability": 0.0, "caption_dropout": 0.0,
    "gradient_checkpointing": True, "seed": 0, "save_every": 250, "init_from": "none (train from scratch)",
    "resume": False, "validate_every": 250, "validation_scenes": 2, "validation_size": 256, "validation_steps": 12,
}


def training_then_sampling() -> list:
    shared = {n.id: n for n in bw.shared_nodes()}
    del shared[4]  # the loader of the released checkpoint: the trainer's MODEL replaces it
    shared[5].inputs = {"model": (13, 0, "MODEL")}
    dataset = bw.Node(12, "LumiXTrainingDataset", (40, 520), (340, 200), "LumiX Training Dataset",
                      widgets={"folder": DATASET_FOLDER, "resolution": 512, "flip": False, "cache_folder": ""},
                      inputs={"vae": (3, 0, "VAE"), "clip": (2, 0, "CLIP")},
                      outputs=(("dataset", "LUMIX_TRAINING_DATA"), ("summary", "STRING")))
    trainer = bw.Node(13, "LumiXTrainer", (400, 760), (360, 640), "LumiX Trainer", widgets=dict(TRAINER_WIDGETS),
                      inputs={"model": (1, 0, "MODEL"), "dataset": (12, 0, "LUMIX_TRAINING_DATA"), "vae": (3, 0, "VAE")},
                      outputs=(("MODEL", "MODEL"), ("plot", "IMAGE"), ("report", "STRING")))
    plot = bw.preview(14, (830, 760), 13, 1, "Loss and consistency metrics")
    return list(shared.values()) + [dataset, trainer, plot, bw.sampler(3.0)] + bw.savers() + [
        bw.note(30, (40, 760),
                f"Training data: ComfyUI/input/{DATASET_FOLDER}/ (or an absolute path), either\n"
                "- <map>/<id>_<map>.png with the map folders diffuse_reflectance, diffuse_illumination, color, depth, "
                "normal and captions in captions_blip2/<id>_color.json (the LumiX reference), or\n"
                "- one folder per scene with albedo/irradiance/color/depth/normal.png and lumix.json (LumiX Save "
                "Maps writes these).\nThe dataset node caches VAE latents and text embeddings in .lumix_cache/.",
                (340, 260)),
        bw.note(31, (1170, 600),
                f"The trainer writes models/lumix/{OUTPUT_NAME}.safetensors (loads in the LumiX Tensor LoRA Loader) "
                f"and, in models/lumix/{OUTPUT_NAME}_training/, step checkpoints, a resumable state, log.jsonl and "
                "plot.png. Cancel saves the state: queue again with resume on to continue.\n\nThe paper: prodigy "
                "(pip install prodigyopt) at learning rate 1.0, batch 16, 10K steps, rank 8. Its MODEL output "
                "feeds the sampler directly.", (340, 240)),
    ]


def _with_sockets(build):
    saved = dict(bw.SOCKETS)
    bw.SOCKETS.update(TRAINING_SOCKETS)
    try:
        return build(training_then_sampling())
    finally:
        bw.SOCKETS.clear()
        bw.SOCKETS.update(saved)


def ui_graph() -> dict:
    return _with_sockets(bw.to_ui)


def api_graph() -> dict:
    return _with_sockets(bw.to_api)


def main():
    os.makedirs(bw.WORKFLOW_DIR, exist_ok=True)
    for file_name, graph in ((f"{NAME}.json", ui_graph()), (f"{NAME}_api.json", api_graph())):
        with open(os.path.join(bw.WORKFLOW_DIR, file_name), "w") as f:
            f.write(json.dumps(graph, indent=2) + "\n")
        print("wrote", os.path.join("workflows", file_name))


if __name__ == "__main__":
    main()
