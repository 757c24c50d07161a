"""Workarounds for TransferQueue 0.1.11, verl's data plane between rollout and training (see the package docstring)."""

from __future__ import annotations

from verl_ext.cpu.workarounds import Workaround

WORKAROUNDS = (
    Workaround(
        "TransferQueue",
        "0.1.11",
        target="transfer_queue.backend.SimpleStorage.num_data_storage_units",
        symptom="tq.init waits forever for its default 8 storage actors on a small machine",
        fix="one storage unit",
        delete_when="never needed on a GPU node (many cores); on a laptop, as long as the default stays 8",
        overrides=("transfer_queue.backend.SimpleStorage.num_data_storage_units=1",),
    ),
)
