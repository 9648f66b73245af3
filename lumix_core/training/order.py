"""Which scenes each rank trains on at each step: a pure function of (seed, step, rank, world size).

Each epoch is one permutation of all scenes drawn from (seed, epoch). Optimisation step s takes the
next `batch_size` positions of it (the global batch; a last incomplete batch of an epoch is dropped);
micro-step m of rank r takes every (world_size * accumulation)-th position of that slice. The data
position is therefore the step itself: resuming at step s continues the same order, and any world
size sees the same global batches without overlap between ranks.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, position, ...), well mixed and platform-independent."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Assignment:
    """One scene a rank trains on: its dataset index and its position in the global order (which
    seeds its noise, timesteps, crop and flip, so they do not depend on the rank that draws it)."""
    index: int
    position: int


@dataclass(frozen=True)
class DataOrder:
    num_scenes: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    grad_accumulation: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        per_step = self.world_size * self.grad_accumulation
        if self.batch_size % per_step:
            raise ValueError(f"the global batch ({self.batch_size} scenes) must be a multiple of world size x "
                             f"gradient accumulation ({self.world_size} x {self.grad_accumulation} = {per_step})")
        if self.num_scenes < self.batch_size:
            raise ValueError(f"the dataset has {self.num_scenes} usable scene(s), fewer than the batch size "
                             f"{self.batch_size}; lower the batch size or add scenes")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_scenes // self.batch_size

    def epoch_permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 0x0D))
        return torch.randperm(self.num_scenes, generator=g).tolist()

    def global_batch(self, step: int) -> list[Assignment]:
        """All scenes of optimisation step `step` (0-based), over every rank and micro-step."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = self.epoch_permutation(epoch)
        start = within * self.batch_size
        return [Assignment(perm[start + i], step * self.batch_size + i) for i in range(self.batch_size)]

    def micro_batches(self, step: int) -> list[list[Assignment]]:
        """This rank's scenes for each micro-step of `step`."""
        batch = self.global_batch(step)
        per_micro = self.batch_size // self.grad_accumulation
        out = []
        for m in range(self.grad_accumulation):
            chunk = batch[m * per_micro:(m + 1) * per_micro]
            out.append(chunk[self.rank::self.world_size])
        return out
