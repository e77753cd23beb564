"""What stays loaded in a builder process across rounds: a worker's generator, classifier and
images, the driver's data set. Torch-free, so the driver's input checks can use it."""
from __future__ import annotations

# One entry per slot ("generator", "classifier", "images" in a worker; "dataset" in a builder's
# driver): a process keeps the last value it loaded and reuses it while the key is equal. A new key drops the old value before loading the
# new one, so two generators never sit in one GPU's memory.
_RESIDENT: dict[str, tuple[object, object]] = {}
_LOADS: dict[str, int] = {}     # loads per slot in this process (what a pool's persistence saves)


def resident(slot: str, key, load):
    """The value of ``slot`` for ``key``: the one this process loaded last if its key is equal,
    else ``load()`` (after dropping the old value)."""
    held = _RESIDENT.get(slot)
    if held is not None and held[0] == key:
        return held[1]
    _RESIDENT.pop(slot, None)
    value = load()
    _RESIDENT[slot] = (key, value)
    _LOADS[slot] = _LOADS.get(slot, 0) + 1
    return value


def resident_loads() -> dict[str, int]:
    """How many times this process loaded each slot."""
    return dict(_LOADS)
