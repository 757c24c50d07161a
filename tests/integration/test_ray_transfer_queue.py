"""Ray + TransferQueue on a 2-core machine: a round trip through the real data plane verl's trainer uses."""


def test_ray_transfer_queue_round_trip(ray_tq):
    import torch
    from tensordict import TensorDict

    td = TensorDict({"x": torch.arange(4).reshape(2, 2)}, batch_size=[2])
    ray_tq.kv_batch_put(keys=["a", "b"], partition_id="p", fields=td)
    got = ray_tq.kv_batch_get(keys=["a", "b"], partition_id="p")["x"]
    # TransferQueue hands rows back as a (jagged) nested tensor.
    rows = got.unbind() if getattr(got, "is_nested", False) else list(got)
    assert [r.tolist() for r in rows] == td["x"].tolist()
