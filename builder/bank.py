"""The memory bank of the contrastive term (the method's contrastive term): final latents of earlier guided
renders, per class, that a new render of the class is pushed away from.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F


class MemoryBank:
    """Final latents of earlier guided samples, per class, for the contrastive term.

    Entries are kept on the CPU in float16 (as in the paper code), at most ``capacity`` per class,
    oldest evicted first; and with ``total_capacity``, at most that many in all: past it, the
    oldest entry of the class that holds the most is evicted (the lowest label on a tie), so the
    bank stays spread over the classes and its memory is bounded at any class count (a per-class
    cap alone grows with the number of classes: 1,024 per class is 1,024,000 latents at 1,000).
    """

    def __init__(self, capacity: int, sample_size: int, total_capacity: Optional[int] = None):
        if capacity < 1 or sample_size < 1:
            raise ValueError(f"memory bank capacity={capacity}, sample_size={sample_size}: both must be >= 1")
        if total_capacity is not None and total_capacity < 1:
            raise ValueError(f"memory bank total_capacity={total_capacity}: must be >= 1 or None")
        self.capacity = capacity
        self.total_capacity = total_capacity
        self.sample_size = sample_size
        self._entries: dict[int, deque[torch.Tensor]] = {}
        self._recorded: Optional[list[tuple[int, torch.Tensor]]] = None

    def __len__(self) -> int:
        return sum(len(d) for d in self._entries.values())

    def size(self, label: int) -> int:
        return len(self._entries.get(int(label), ()))

    def add(self, labels: Sequence[int], latents: torch.Tensor) -> None:
        """Append one latent ``[C, h, w]`` per label."""
        if len(labels) != latents.shape[0]:
            raise ValueError(f"{len(labels)} labels for {latents.shape[0]} latents")
        for y, z in zip(labels, latents.detach().to("cpu", torch.float16)):
            z = z.clone()
            self._entries.setdefault(int(y), deque(maxlen=self.capacity)).append(z)
            if self._recorded is not None:
                self._recorded.append((int(y), z))
            if self.total_capacity is not None and len(self) > self.total_capacity:
                largest = max(sorted(self._entries), key=lambda k: len(self._entries[k]))
                self._entries[largest].popleft()

    def start_recording(self) -> None:
        """From now on, remember every added latent in order (what a shard adds to the bank)."""
        self._recorded = []

    def recorded(self) -> tuple[list[int], torch.Tensor | None]:
        """``(labels, [n, C, h, w] float16)`` added since :meth:`start_recording` (None when nothing)."""
        entries = self._recorded or []
        return [y for y, _ in entries], (torch.stack([z for _, z in entries]) if entries else None)

    def sample(self, label: int, generator: torch.Generator) -> torch.Tensor | None:
        """A random draw without replacement of min(size, sample_size) latents, float32, or None."""
        entries = self._entries.get(int(label))
        if not entries:
            return None
        idx = torch.randperm(len(entries), generator=generator)[: self.sample_size]
        return torch.stack([entries[i] for i in idx.tolist()]).float()

    def state_dict(self) -> dict[int, torch.Tensor]:
        """``{label: [n, C, h, w] float16}``, oldest first (to persist the bank between runs)."""
        return {y: torch.stack(list(d)) for y, d in self._entries.items() if d}

    def load_state_dict(self, state: dict[int, torch.Tensor]) -> None:
        self._entries = {}
        for y, z in state.items():
            self.add([int(y)] * len(z), z)


def contrastive_loss(x0_hat: torch.Tensor, bank: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_k max(0, ρ − ‖x̂0 − z_k‖₂) for one sample ``[C, h, w]`` against ``[K, C, h, w]``."""
    d = torch.linalg.vector_norm(x0_hat.float().flatten()[None] - bank.flatten(1), dim=1)   # [K]
    return F.relu(margin - d).mean()
