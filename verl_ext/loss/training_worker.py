"""verl's actor TrainingWorker, extended with the mini-batch-wide counts that `lte.loss.aggregation=separate` needs.

The paper's separate normalisers, 1/Z (on-policy loss tokens) and 1/Z' (hinted loss tokens), are counts over a whole
mini-batch: every micro-batch and every DP rank. verl hands each micro-batch's loss only the mini-batch's total
(`batch_num_tokens`, summed over the DP group in the engine's `forward_backward_batch`, and `global_batch_size`),
never a per-part count, and the micro-batches of a mini-batch are cut inside the engine (fixed size or a token
budget). `LTETrainingWorker.train_batch` -- called once per mini-batch and rank, before the engine cuts it -- counts
the parts, sums them over the DP group as the engine sums its own token count, and attaches them to the mini-batch
as non-tensor data, which verl copies into every micro-batch like `batch_num_tokens`. `lte_ppo_loss` reads them
there (`PART_COUNTS_FIELD`).

`LTEActorRolloutRefWorker` is verl's `ActorRolloutRefWorker` with this actor worker (verl's own extension point,
`actor_worker_cls`); the LTE trainer puts it in place of verl's worker class.
"""

from __future__ import annotations

import functools

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from verl_ext.loss.mixed_policy import PartCounts, count_parts
from verl_ext.loss.ppo_loss import OFF_POLICY_FIELD, PART_COUNTS_FIELD


def local_part_counts(data: TensorDict) -> torch.Tensor:
    """[on_tokens, off_tokens, on_rows, off_rows] of this rank's mini-batch (int64, on the CPU).

    A batch without the `lte_off_policy` field (a non-LTE batch) counts every row as on-policy; the loss itself
    refuses such a batch with a clear error.
    """
    names = ["response_mask"] + ([OFF_POLICY_FIELD] if OFF_POLICY_FIELD in data.keys() else [])
    padded = data.select(*names).to_padded_tensor()
    mask = padded["response_mask"]
    flag = padded[OFF_POLICY_FIELD] if OFF_POLICY_FIELD in padded.keys() else torch.zeros(mask.shape[0])
    return count_parts(mask.cpu(), flag.reshape(-1).cpu())


def attach_part_counts(data: TensorDict, dp_group=None) -> PartCounts:
    """Count the parts of this rank's mini-batch, sum them over `dp_group` (None: a single rank) and attach them
    to `data` as `PART_COUNTS_FIELD`; returns them."""
    counts = local_part_counts(data)
    if dp_group is not None and torch.distributed.is_initialized():
        counts = counts.to(get_device_id())  # NCCL reduces device tensors, as the engine's batch_num_tokens
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM, group=dp_group)
    result = PartCounts(*(int(c) for c in counts.tolist()))
    tu.assign_non_tensor(data, **{PART_COUNTS_FIELD: tuple(result)})
    return result


class LTETrainingWorker(TrainingWorker):
    """verl's `TrainingWorker` whose every mini-batch carries its on-policy / hinted counts (see the module doc)."""

    @functools.wraps(TrainingWorker.train_batch)  # keeps verl's dispatch registration
    def train_batch(self, data: TensorDict) -> TensorDict:
        attach_part_counts(data, self.engine.get_data_parallel_group())
        return super().train_batch(data)


class LTEActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's `ActorRolloutRefWorker` whose actor is an `LTETrainingWorker` (the reference model is verl's)."""

    actor_worker_cls = LTETrainingWorker
