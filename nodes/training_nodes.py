"""Training nodes: a dataset folder -> cached encoded scenes, and MODEL + dataset -> trained LumiX."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io, ui

from ..lumix_core import CheckpointError
from ..lumix_core.training import (
    OPTIMIZERS, TIMESTEP_SAMPLINGS, DatasetError, TrainConfig, TrainingStopped, encode_dataset, read_training_state,
    scan_dataset,
)
from ..lumix_core.training.cache import CACHE_FOLDER
from ..lumix_core.training.config import SETTING
from ..lumix_core.training.files import RunFiles
from . import categories
from .dataset_cache_keys import caption_identity, encoders_identity, text_encoder
from .dataset_folders import DEFAULT_FOLDER, FolderError, dataset_choices, resolve_cache, resolve_dataset
from .flux_model import NotFluxError, flux_diffusion_model
from .model_nodes import LUMIX_FOLDER, checkpoint_choices, checkpoint_path
from .sampling_steps import warn_user
from .training_model import trained_model
from .training_session import ValidationSpec, build_session

TrainingData = io.Custom("LUMIX_TRAINING_DATA")
NO_INIT = "none (train from scratch)"


class LumiXTrainingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXTrainingDataset",
            display_name="LumiX Training Dataset",
            category=categories.TRAINING,
            description="Reads a folder of scenes (five maps + a caption each), encodes them once with the VAE and "
                        "text encoders and caches the result on disk. Layouts: <root>/<map>/<id>_<map>.png with "
                        "captions in <root>/captions*/<id>_color.json (the LumiX reference), or scene folders with "
                        "albedo/irradiance/color/depth/normal.png and lumix.json (LumiX Save Maps). Folders: "
                        "subfolders of ComfyUI/input/, or of folders registered as 'lumix_datasets' in "
                        "extra_model_paths.yaml.",
            inputs=[
                io.Combo.Input("folder", options=dataset_choices(), default=DEFAULT_FOLDER,
                               tooltip="Dataset folder: a subfolder of ComfyUI/input/, or '<name> [lumix_datasets]' "
                                       "from a folder registered as lumix_datasets in extra_model_paths.yaml "
                                       "(press R in the browser to refresh the list)."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Clip.Input("clip", tooltip="The FLUX text encoders (DualCLIPLoader: t5xxl + clip_l, type flux). "
                                              "Put T5TokenizerOptions (min_length 512) before it for the reference's "
                                              "T5 padding; the cache is keyed by the tokens, so changing it re-encodes."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=16,
                             tooltip="Training crop size; images are resized (aspect kept) so the short side is this."),
                io.Boolean.Input("flip", default=False,
                                 tooltip="Also cache mirrored copies for random horizontal flips (the normal map's x "
                                         "is negated). Off by default, as in the paper's description."),
                io.String.Input("cache_folder", default="",
                                tooltip="Where encoded latents/text go. Empty: <folder>/.lumix_cache inside the "
                                        "dataset folder. Otherwise a folder name under ComfyUI/output/ (e.g. "
                                        "lumix_cache/my_data); absolute paths, '~' and '..' are refused."),
            ],
            outputs=[TrainingData.Output("dataset", display_name="dataset",
                                         tooltip="The cached scenes, for the LumiX Trainer."),
                     io.String.Output("summary", tooltip="How many scenes were used and why others were skipped.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, vae, clip, resolution, flip, cache_folder):
        try:
            root = resolve_dataset(folder).path
        except FolderError as exc:
            return str(exc)  # execute reports it
        def mtime(path):  # lstat: a link is not followed (out of the dataset, or broken)
            try:
                return os.lstat(path).st_mtime
            except OSError:
                return None

        stamp = [(p, mtime(os.path.join(p, f))) for p, _, fs in os.walk(root)
                 if CACHE_FOLDER not in p for f in sorted(fs)]
        return hashlib.sha256(repr(stamp).encode()).hexdigest()

    @classmethod
    def execute(cls, folder, vae, clip, resolution, flip, cache_folder) -> io.NodeOutput:
        try:
            dataset_folder = resolve_dataset(folder)
            cache, cache_label = resolve_cache(cache_folder, dataset_folder)
            scan = scan_dataset(dataset_folder.path, confine=True, label=dataset_folder.label)
        except (FolderError, DatasetError) as exc:
            raise ValueError(f"LumiX Training Dataset: {exc}") from None
        pbar = comfy.utils.ProgressBar(len(scan.scenes))
        try:
            with torch.inference_mode(False):
                image_id, text_id = encoders_identity(vae, clip)
                dataset = encode_dataset(scan, vae.encode, text_encoder(clip), cache, resolution, flip,
                                         encoder_id=image_id, text_encoder_id=text_id,
                                         progress=lambda done, total: pbar.update_absolute(done, total),
                                         text_identity=caption_identity(clip), cache_label=cache_label)
        except ValueError as exc:  # no decodable scene, an encoder that returns NaN or the wrong shape
            raise ValueError(f"LumiX Training Dataset: {exc}") from None
        skipped = "".join(f"\n  skipped {sid}: {why}" for sid, why in dataset.skipped[:20])
        text = dataset.summary + f"\ncache: {cache_label}" + skipped
        return io.NodeOutput(dataset, text, ui=ui.PreviewText(text))


def _plot_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _output_folder() -> str:
    paths = folder_paths.get_folder_paths(LUMIX_FOLDER) if LUMIX_FOLDER in folder_paths.folder_names_and_paths else []
    return paths[0] if paths else os.path.join(folder_paths.models_dir, LUMIX_FOLDER)


def _widget(name: str) -> dict:
    """A trainer widget's default and range: the training settings' schema (lumix_core.training.config),
    which the command-line trainer's [train] table follows too."""
    setting = SETTING[name]
    if setting.choices is not None:
        return {"options": list(setting.choices), "default": setting.default}
    if setting.kind is bool:
        return {"default": setting.default}
    high = setting.high
    if setting.high_open:  # e.g. ema_decay < 1: the widget stops just below
        high = 0.99999
    return {"default": setting.default, "min": setting.low, "max": high}


def _cancel_message(name: str, interrupted, step: int, total: int) -> str:
    """What Cancel left on disk, for the node's text and the server log."""
    if interrupted is None or interrupted.state_path is None:
        if step:
            return (f"LumiX Trainer: cancelled before training went on; the saved state of {name} at step {step} of "
                    f"{total} is unchanged (queue again with resume on to continue).")
        return f"LumiX Trainer: cancelled before the first step of {name}; nothing was trained or saved."
    where = {"validation": " during validation", "progress": "", "save": " while saving", "step": " mid-step",
             "between steps": ""}.get(interrupted.where, "")
    return (f"LumiX Trainer: cancelled{where} after step {interrupted.step} of {total}. Saved the resumable state "
            f"{name}_training/{os.path.basename(interrupted.state_path)} at step {interrupted.step}; queue again with "
            f"resume on (same output_name and settings) to continue from there.")


class LumiXTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LumiXTrainer",
            display_name="LumiX Trainer",
            category=categories.TRAINING,
            description="Trains LumiX Tensor LoRA adapters on FLUX.1-dev with query broadcast, each map with its own "
                        "timestep (flow matching). Only the adapters learn; the FLUX weights are not changed. Writes "
                        "models/lumix/<output_name>.safetensors (loads in the LumiX Tensor LoRA Loader), step "
                        "checkpoints, a resumable state and logs in models/lumix/<output_name>_training/. Cancel "
                        "saves a resumable state at the last finished step (the node says which); run again with "
                        "resume on to continue.",
            hidden=[io.Hidden.unique_id],
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-dev (Load Diffusion Model); any dtype, fp8 included."),
                TrainingData.Input("dataset", tooltip="From LumiX Training Dataset."),
                io.String.Input("output_name", default="lumix_trained", tooltip="File name (no extension) in models/lumix/."),
                io.Int.Input("steps", **_widget("steps"), tooltip="Optimisation steps (the paper: 10K)."),
                io.Int.Input("rank", **_widget("rank"), tooltip="Tensor LoRA rank R (the paper: 8). Ignored with init_from."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw",
                               tooltip="prodigy is the paper's (learning rate 1.0; needs 'pip install prodigyopt')."),
                io.Float.Input("learning_rate", **_widget("learning_rate"), step=1e-5, round=False,
                               tooltip="AdamW: about 1e-4. Prodigy: 1.0."),
                io.Int.Input("batch_size", **_widget("batch_size"), tooltip="Scenes per step (the paper: 16)."),
                io.Int.Input("grad_accumulation", **_widget("grad_accumulation"),
                             tooltip="Micro-steps per step; batch_size must be a multiple of it."),
                io.Int.Input("warmup_steps", **_widget("warmup_steps"), tooltip="Linear learning-rate warm-up."),
                io.Float.Input("max_grad_norm", **_widget("max_grad_norm"), step=0.1, tooltip="0 turns clipping off."),
                io.Combo.Input("timestep_sampling", options=list(TIMESTEP_SAMPLINGS), default="logit_normal",
                               tooltip="Per-map t: logit-normal, or uniform over the shifted FLUX schedule (x-flux)."),
                io.Float.Input("guidance", **_widget("guidance"), step=0.1, tooltip="FLUX guidance embed while training."),
                io.Float.Input("held_map_probability", **_widget("held_map_probability"), step=0.01,
                               tooltip="Chance a scene holds a random subset of maps clean at t = 0 (trains decomposition)."),
                io.Float.Input("caption_dropout", **_widget("caption_dropout"), step=0.01,
                               tooltip="Chance a scene trains with the empty caption (for CFG)."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute each block in the backward pass: much less memory, ~30% slower."),
                io.Int.Input("seed", **_widget("seed"), tooltip="Data order, crops, noise and timesteps."),
                io.Int.Input("save_every", **_widget("save_every"), tooltip="Checkpoint + state every N steps; 0: at the end only."),
                io.Combo.Input("init_from", options=[NO_INIT] + checkpoint_choices(),
                               tooltip="Fine-tune an existing LumiX checkpoint instead of starting from scratch."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue the run saved in models/lumix/<output_name>_training/ (after Cancel or a crash)."),
                io.Int.Input("validate_every", **_widget("validate_every"),
                             tooltip="Every N steps, sample validation scenes and log map-consistency metrics (needs vae)."),
                io.Vae.Input("vae", optional=True, tooltip="The FLUX VAE, for validation samples."),
                io.Int.Input("validation_scenes", default=2, min=1, max=16, tooltip="The first N captions of the dataset."),
                io.Int.Input("validation_size", default=256, min=64, max=1024, step=16,
                             tooltip="Width and height of the validation samples (small: validation stays quick)."),
                io.Int.Input("validation_steps", default=12, min=1, max=100,
                             tooltip="Sampling steps of each validation sample."),
                # added after the first release: optional and last, so older workflows (their widget values are
                # positional) and API prompts without them keep working, with the setting's default
                io.Float.Input("alpha", **_widget("alpha"), step=0.1, round=False, optional=True,
                               tooltip="Adapter scale alpha / sqrt(R) (the released checkpoint: 1.0). Ignored with "
                                       "init_from. The reference code reads alpha from its config, not the file."),
                io.Combo.Input("lr_schedule", **_widget("lr_schedule"), optional=True,
                               tooltip="After the warm-up: constant, or cosine decay to lr_min_ratio x learning_rate "
                                       "at the last step. Costs nothing."),
                io.Float.Input("lr_min_ratio", **_widget("lr_min_ratio"), step=0.01, optional=True,
                               tooltip="Cosine only: the last step's learning rate as a fraction of learning_rate."),
                io.Float.Input("ema_decay", **_widget("ema_decay"), step=0.0001, round=False, optional=True,
                               tooltip="EMA of the adapters (e.g. 0.999); 0: off. Saved beside each checkpoint as "
                                       "*_ema.safetensors and used for validation. Costs one more copy of the "
                                       "adapters in memory and on disk per checkpoint."),
                io.Int.Input("keep_last", **_widget("keep_last"), optional=True,
                             tooltip="Keep only the newest N step checkpoints of this run (0: all). The final "
                                     "checkpoint, the best one and the state are never removed."),
                io.Boolean.Input("keep_best", **_widget("keep_best"), optional=True,
                                 tooltip="With validation: keep <output_name>_best.safetensors in the run's folder, "
                                         "the checkpoint with the best best_metric so far."),
                io.Combo.Input("best_metric", **_widget("best_metric"), optional=True,
                               tooltip="Validation metric keep_best compares: photometric_residual and "
                                       "geometric_degrees lower is better, structural_alignment higher."),
                io.Int.Input("prefetch", **_widget("prefetch"), optional=True,
                             tooltip="Steps of data read ahead in a background thread (the same results); 0: read "
                                     "in the step. Helps when a GPU waits for the disk; on a CPU-only machine set 0."),
            ],
            outputs=[io.Model.Output(tooltip="The input model with the trained adapters (the input is left unchanged)."),
                     io.Image.Output("plot", tooltip="Loss and validation metrics over the steps."),
                     io.String.Output("report", tooltip="Where the files went and the last numbers.")],
        )

    @classmethod
    def execute(cls, model, dataset, output_name, init_from=NO_INIT, resume=False, vae=None, validation_scenes=2,
                validation_size=256, validation_steps=12, **settings) -> io.NodeOutput:
        # every other input is a training setting (lumix_core.training.config.SETTINGS, as the CLI's [train]);
        # the crop size and flips are the dataset's
        name = output_name.strip()
        out_dir = _output_folder()
        work_dir = os.path.join(out_dir, f"{name}_training")
        try:
            config = TrainConfig.from_dict({**settings, "resolution": dataset.resolution, "flip": dataset.flip})
            flux_diffusion_model(model)
        except (ValueError, NotFluxError) as exc:
            raise ValueError(f"LumiX Trainer: {exc}") from None
        try:  # every name the run writes, temporaries included, before anything is loaded or trained
            files = RunFiles(work_dir, name, os.path.join(out_dir, f"{name}.safetensors"))
            files.check(config.steps)
        except ValueError as exc:
            raise ValueError(f"LumiX Trainer: output_name: {exc}.") from None
        if config.validate_every and vae is None:
            raise ValueError("LumiX Trainer: validate_every is on but no vae is connected; connect the FLUX VAE or set it to 0.")
        final_path, state_path = files.final_path, files.state
        existing = files.existing()
        if not resume and existing:
            raise ValueError(f"LumiX Trainer: {existing[0]} already exists. Choose another output_name, or turn "
                             "resume on to continue that run.")
        if resume and not os.path.exists(state_path):
            raise ValueError(f"LumiX Trainer: resume is on but there is no saved state at {state_path}; turn resume "
                             "off to start a new run.")
        node_id = cls.hidden.unique_id if cls.hidden else None
        stale = files.remove_stale_temporaries()  # a killed run's half-written files (ours only)

        with torch.inference_mode(False), torch.enable_grad():
            try:
                state = read_training_state(state_path) if resume else None
                session = build_session(model, dataset, config, files,
                                        init_checkpoint=checkpoint_path(init_from) if init_from != NO_INIT else None,
                                        resume_state=state, state_source=f"the saved state {name}.state.pt",
                                        validation=ValidationSpec(vae, validation_scenes, validation_size,
                                                                  validation_steps) if vae is not None else None)
            except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
                raise ValueError(f"LumiX Trainer: {exc}") from None
            trainer, log = session.trainer, session.log
            pbar = comfy.utils.ProgressBar(config.steps)
            preview_every = max(1, config.steps // 20)

            def on_step(metrics):
                session.on_step(metrics)
                preview = None
                if "validation" in metrics.extra and session.validation is not None:
                    preview = ("PNG", session.validation.last_grid, 768)  # the maps just sampled
                elif metrics.step % preview_every == 0:
                    preview = ("PNG", log.plot(), 768)
                pbar.update_absolute(metrics.step, config.steps, preview)

            interrupt = comfy.model_management.InterruptProcessingException
            try:
                pbar.update_absolute(trainer.step, config.steps)  # ComfyUI's hook may raise Cancel here too
                with session.frozen_base():
                    trainer.run(on_step=on_step, should_stop=comfy.model_management.processing_interrupted,
                                interrupts=(interrupt,))
            except (interrupt, TrainingStopped):
                # the trainer saved the last finished step's state; say so, then let ComfyUI see the Cancel
                log.plot()
                warn_user(node_id, _cancel_message(name, trainer.interrupted, trainer.step, config.steps))
                comfy.model_management.throw_exception_if_processing_interrupted()  # (TrainingStopped)
                raise
            except (FloatingPointError, OSError, ValueError) as exc:
                # diverged, a file that could not be written, a bad cache file, validation refusing a sample
                saved = f" (its state at step {trainer.saved_state_step})" if trainer.saved_state_step else ""
                raise ValueError(f"LumiX Trainer: {exc}. Checkpoints already written are intact{saved}; queue "
                                 "again with resume on to continue from the last saved state.") from None
            finally:
                log.close()  # also on errors: a long-lived server must not keep the log's files open
            plot = log.plot()
            trained = trained_model(model, session.adapters, f"{name}.safetensors")
        last = log.records[-1] if log.records else {}
        if config.ema_decay:
            trainer.notes.append(f"the MODEL output holds the raw trained weights; their EMA is {name}_ema.safetensors "
                                 "(pick it in the LumiX Tensor LoRA Loader to sample with it)")
        report = (f"LumiX Trainer: {trainer.step} steps on {dataset.summary}\n"
                  f"checkpoint: {final_path}\nlogs, step checkpoints, state: {work_dir}\n"
                  f"last loss: {last.get('loss', float('nan')):.5f}")
        for note in [log.tensorboard_note, log.repair_note] + trainer.notes + [f"removed a killed run's temporary file "
                                                                f"{os.path.basename(p)}" for p in stale]:
            if note:
                report += f"\n{note}"
        shown = ui.PreviewText(report).as_dict()
        grid = session.validation.last_grid if session.validation is not None else None
        if grid is not None:  # the last validation's five maps per caption, under the report
            shown.update(ui.PreviewImage(_plot_tensor(grid), cls=cls).as_dict())
        return io.NodeOutput(trained, _plot_tensor(plot), report, ui=shown)
