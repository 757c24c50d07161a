"""Ray + TransferQueue on a 2-core machine: a round trip through the real data plane verl's trainer uses, and the LTE
trainer's read-back of a step's rows for its on-policy diagnostics."""

import pytest


def test_ray_transfer_queue_round_trip(ray_tq):
    import torch
    from tensordict import TensorDict

    td = TensorDict({"x": torch.arange(4).reshape(2, 2)}, batch_size=[2])
    ray_tq.kv_batch_put(keys=["a", "b"], partition_id="p", fields=td)
    got = ray_tq.kv_batch_get(keys=["a", "b"], partition_id="p")["x"]
    # TransferQueue hands rows back as a (jagged) nested tensor.
    rows = got.unbind() if getattr(got, "is_nested", False) else list(got)
    assert [r.tolist() for r in rows] == td["x"].tolist()


def test_verls_rollout_diagnostics_are_replaced_by_on_policy_ones(ray_tq):
    """The trainer's hook reads the step's rows back from TransferQueue (nested, as the rollout stage wrote them)
    and puts on-policy-only values under verl's names; a key it cannot recompute is dropped, never left mixed."""
    import torch
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta

    from recipe.lte.diagnostics import on_policy_rollout_diagnostics, replace_with_on_policy_diagnostics

    lengths, off = [3, 2, 4], [0.0, 1.0, 0.0]
    g = torch.Generator().manual_seed(0)
    old = [-torch.rand(n, generator=g, dtype=torch.float64) for n in lengths]
    rollout = [o - (3.0 if f else 0.05) for o, f in zip(old, off, strict=True)]

    def nested(rows):
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)

    fields = TensorDict(
        {
            "old_log_probs": nested(old),
            "rollout_log_probs": nested(rollout),
            "response_mask": nested([torch.ones(n, dtype=torch.int64) for n in lengths]),
            "responses": nested([torch.arange(n) for n in lengths]),
            "lte_off_policy": torch.tensor(off),
        },
        batch_size=[3],
    )
    keys = ["d0", "d1", "d2"]
    ray_tq.kv_batch_put(keys=keys, partition_id="diag", fields=fields)
    batch = KVBatchMeta(partition_id="diag", keys=keys, tags=[{} for _ in keys])
    metrics = {"training/rollout_probs_diff_mean": 99.0, "rollout_corr/kl": 99.0, "rollout_corr/unknown": 99.0}
    replace_with_on_policy_diagnostics(batch, metrics, {"rollout_is": None})
    padded = {k: torch.nested.to_padded_tensor(fields[k], 0.0) for k in ("old_log_probs", "rollout_log_probs", "response_mask", "responses")}  # fmt: skip
    want = on_policy_rollout_diagnostics(padded, torch.tensor(off), {"rollout_is": None})
    on_tokens = [(o, r) for o, r, f in zip(old, rollout, off, strict=True) if not f]
    hand_kl = sum((r - o).sum().item() for o, r in on_tokens) / sum(len(o) for o, _ in on_tokens)
    assert metrics == {k: want[k] for k in ("training/rollout_probs_diff_mean", "rollout_corr/kl")}
    assert metrics["rollout_corr/kl"] == pytest.approx(hand_kl, rel=1e-9)
