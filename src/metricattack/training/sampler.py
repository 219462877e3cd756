"""Identity-balanced P×K batch sampler for metric losses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``P`` distinct identities × ``K`` images each (``P*K`` indices).

    Each epoch, every identity's images are shuffled and cut into groups of ``K`` (an
    identity with fewer than ``K`` images, or a short last group, is filled up by drawing
    its own images again at random), and the groups are dealt into batches so that no
    identity appears twice in a batch. Groups that cannot complete a batch are dropped.
    The order is a function of ``seed + epoch`` only (see :meth:`set_epoch`).

    Under DDP, pass ``rank``/``world``: rank r takes batches r, r+world, ... of the same
    sequence, so ranks see disjoint batches.
    """

    def __init__(
        self, labels: Sequence[int], ids_per_batch: int, images_per_id: int, *, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.by_label: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_label.setdefault(int(label), []).append(index)
        if len(self.by_label) < ids_per_batch:
            raise ConfigError(
                f"batch.batch_size / batch.images_per_id = {ids_per_batch} identities per batch, "
                f"but the training set has only {len(self.by_label)} identities"
            )
        self.p, self.k = ids_per_batch, images_per_id
        self.seed, self.epoch = seed, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch``."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        groups: list[tuple[int, list[int]]] = []
        for label in sorted(self.by_label):
            items = self.by_label[label]
            order = [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]
            short = (-len(order)) % self.k
            order += [items[i] for i in torch.randint(len(items), (short,), generator=gen).tolist()]
            groups.extend((label, order[s : s + self.k]) for s in range(0, len(order), self.k))
        groups = [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
        batches: list[list[int]] = []
        open_batches: list[tuple[set[int], list[int]]] = []
        for label, group in groups:
            slot = next((b for b in open_batches if label not in b[0]), None)
            if slot is None:
                slot = (set(), [])
                open_batches.append(slot)
            slot[0].add(label)
            slot[1].extend(group)
            if len(slot[0]) == self.p:
                open_batches.remove(slot)
                batches.append(slot[1])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        usable = len(batches) - len(batches) % self.world
        return iter(batches[self.rank : usable : self.world])

    def __len__(self) -> int:
        return len(self._batches()) // self.world
