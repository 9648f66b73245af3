"""LumiX training, host-free: flow matching over groups of maps, Tensor-LoRA adapters only.

API note for the distributed (torchrun) trainer -- these names are stable:

* ``TrainConfig`` (config.py): every setting; ``to_dict``/``from_dict`` for config files. Its types
  and ranges are ``SETTINGS`` (one ``Setting`` each), which the node's widgets and the CLI's [train]
  table share.
* ``LumiXAdapters`` (adapters.py): ALL trainable parameters in one nn.Module. Wrap it in DDP:
  ``ddp = DistributedDataParallel(adapters)``; its ``forward(compute, *args)`` just runs
  ``compute``, and the Trainer routes every training forward pass through it, so DDP's gradient
  hooks fire. The frozen base is never part of it (nothing to all-reduce there).
  ``block_dict()`` is what the host installs into the model (nodes/training_model.py).
* ``DataOrder`` (order.py): global batches from (seed, step); rank r of world w takes its share of
  each micro-step; ``batch_size`` is GLOBAL (over ranks and accumulation), so lr and batch do not
  depend on the world size. The data position is the step; per-scene randomness (crop, flip,
  noise, t, held maps) is seeded by (seed, step, global position), so 1 process and N processes
  with the same global batch draw the same numbers.
* ``Trainer`` (trainer.py): ``Trainer(denoiser, adapters, data, config, rank=, world_size=,
  is_main=, ddp_module=, device=, output_dir=, name=, log=, validate=)``; ``compute_loss`` (forward),
  ``accumulate_gradients`` (forward+backward of all micro-steps, ``no_sync`` on all but the last
  when the module has it), ``optimizer_step`` (clip, lr schedule, step, EMA update), ``train_step``,
  ``run``; ``state_dict``/``load_state_dict`` (resume, EMA and best value included);
  ``save_checkpoint``/``save_state`` write only when ``is_main``, atomically (files.py).
  ``run(interrupts=(...))``: those exceptions (ComfyUI's Cancel) save the last finished step's state
  wherever raised, set ``trainer.interrupted``, and go on. ``trainer.notes``: messages for the user
  (e.g. a resumed state without EMA); the host shows them.
* Options (config.py): ``lr_schedule``/``lr_min_ratio`` (``lr_factor``, optim.py: linear warm-up, then
  constant or cosine); ``ema_decay`` (``AdapterEMA``, ema.py: main rank only, float32, decay warm-up
  min(decay, (1+n)/(10+n)), ``swapped_in`` for validation and the ``*_ema`` files); ``keep_last``
  (older step checkpoints pruned); ``keep_best``/``best_metric`` (``<name>_best.safetensors``);
  ``prefetch`` (``Prefetcher``, prefetch.py: examples of the next steps read in one background thread,
  bit-identical results, errors raised at the step that needs the data, the thread joined on every exit).
* ``RunFiles`` (files.py): every file a run writes (EMA twins and the best checkpoint included);
  ``check`` (names, temporaries included, and folders, before the first step), ``existing``,
  ``remove_stale_temporaries``, ``step_checkpoints``/``prune_step_checkpoints``.
* ``read_training_state(path)`` (files.py) for ``--resume``, then ``check_training_state`` (resume.py)
  against the model and dataset before anything is allocated from it.
* Data (data.py, cache.py): ``scan_dataset(root, confine=, label=)`` -> ``DatasetScan`` (both layouts, skip
  counts, maps read at full precision); ``encode_dataset(scan, encode_images, encode_text, cache_dir,
  resolution, flip, text_identity=)`` -> ``EncodedDataset`` (a SceneSource) with an on-disk safetensors
  cache keyed by content+settings, its files checked (a bad one read in training raises ``CacheError``);
  ``dataset.with_latent_transform(model.model.process_latent_in)`` before training. The keys: ``CACHE_FOLDER``
  (``<root>/.lumix_cache``, both front doors' default), ``encoder_identity`` (a fingerprint of each encoder's
  weights, alike from a file and from the model a host built of it) and ``cache.text_identity`` (the tokens).
* Host side (ComfyUI as a library): nodes/training_session.py -- ``build_session(model, dataset, config,
  files, init_checkpoint=, resume_state=, ctx=, validation=)``, the one way the node and the CLI set up a
  run (``start_adapters``: scratch, checkpoint or state); nodes/training_model.py -- ``new_adapters``, ``training_model``
  (apply_lumix + per-block checkpointing), ``load_for_training``, ``prepare_base_for_autograd`` (ComfyUI
  builds weights in inference mode; autograd refuses those), ``frozen_base``, ``make_denoiser``,
  ``compute_dtype``; benchmarks/train_step.py imports
  the extension as a package outside ComfyUI's node loader.
"""
from .adapters import LumiXAdapters
from .cache import CacheError, CachedScene, EncodedDataset, encode_dataset, latent_key, text_key
from .config import BEST_METRICS, LR_SCHEDULES, OPTIMIZERS, TIMESTEP_SAMPLINGS, TrainConfig
from .ema import AdapterEMA, ema_decay_at
from .data import DatasetError, DatasetScan, SceneFiles, flip_scene_images, load_scene_images, scan_dataset
from .config import SETTINGS, Setting
from .files import RunFiles, atomic_write, read_training_state, write_lora_checkpoint, write_training_state
from .resume import StateError, check_training_state
from .objective import FlowBatch, LossResult, TrainingExample, flow_matching_loss, make_flow_batch
from .optim import PRODIGY_MISSING, build_optimizer, lr_factor, prodigy_available, warmup_factor
from .prefetch import Prefetcher
from .order import Assignment, DataOrder, derived_seed
from .timesteps import sample_held_maps, sample_map_timesteps, shifted_schedule
from .trainer import Interrupted, SceneSource, StepMetrics, Trainer, TrainingStopped

__all__ = [
    "Assignment", "CacheError", "CachedScene", "DataOrder", "DatasetError", "DatasetScan", "EncodedDataset", "SceneFiles",
    "encode_dataset", "flip_scene_images", "latent_key", "load_scene_images", "scan_dataset", "text_key", "FlowBatch", "LossResult", "LumiXAdapters", "OPTIMIZERS", "PRODIGY_MISSING",
    "SceneSource", "StepMetrics", "TIMESTEP_SAMPLINGS", "TrainConfig", "Trainer", "TrainingExample",
    "TrainingStopped", "atomic_write", "build_optimizer", "derived_seed", "flow_matching_loss", "make_flow_batch",
    "prodigy_available", "read_training_state", "sample_held_maps", "sample_map_timesteps", "shifted_schedule",
    "warmup_factor", "write_lora_checkpoint", "write_training_state", "SETTINGS", "Setting", "RunFiles", "StateError",
    "check_training_state", "Interrupted", "AdapterEMA", "ema_decay_at", "BEST_METRICS", "LR_SCHEDULES", "lr_factor",
    "Prefetcher",
]
