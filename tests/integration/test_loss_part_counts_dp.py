"""The mini-batch part counts of `lte.loss.aggregation=separate` across two real DP ranks: two processes, a gloo
process group, each rank holding its half of a mini-batch, each calling `attach_part_counts` over the group as
`LTETrainingWorker.train_batch` does. Both must attach the whole mini-batch's counts (the loss side of the same
numbers, and its hand computation, is tests/unit/test_loss_ppo_loss.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from verl_ext.cpu.env import cpu_env

REPO_ROOT = Path(__file__).resolve().parents[2]

RANK = r"""
import json, os, sys
import torch
import torch.distributed as dist
import verl  # loads the CPU platform (VERL_USE_EXTERNAL_MODULES)
from verl.utils import tensordict_utils as tu
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl_ext.loss.ppo_loss import PART_COUNTS_FIELD
from verl_ext.loss.training_worker import attach_part_counts

rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=rank, world_size=2)
rows = json.loads(sys.argv[2])[rank]  # (response length, hinted) per row of this rank's half
data = list_of_dict_to_tensordict([
    {"response_mask": torch.ones(n, dtype=torch.int64) if n else torch.zeros(1, dtype=torch.int64),
     "lte_off_policy": torch.tensor(float(off))}
    for n, off in rows
])
counts = attach_part_counts(data, dist.group.WORLD)
print(json.dumps({"counts": list(counts), "attached": list(tu.get_non_tensor_data(data, PART_COUNTS_FIELD, None))}))
dist.destroy_process_group()
"""

# rank 0: 7 on-policy + 5 hinted tokens; rank 1: 3 on-policy, 4 + 6 hinted, and a padding row flagged hinted
HALVES = [[(7, 0), (5, 1)], [(3, 0), (4, 1), (6, 1), (0, 1)]]


def test_two_ranks_attach_the_whole_mini_batch_counts(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    env.update(cpu_env({}), PYTHONPATH=str(REPO_ROOT), WORLD_SIZE="2")
    init = str(tmp_path / "pg_init")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, init, json.dumps(HALVES)],
            env={**env, "RANK": str(rank)},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-4000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    want = [7 + 3, 5 + 4 + 6, 2, 3]  # on tokens, hinted tokens, on rows, hinted rows (the padding row: none)
    assert outs == [{"counts": want, "attached": want}] * 2
