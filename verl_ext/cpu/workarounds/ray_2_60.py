"""Workarounds for Ray 2.60.0 (see the package docstring)."""

from __future__ import annotations

from verl_ext.cpu.workarounds import Workaround

UPSTREAM, VERSION = "ray", "2.60.0"

# Ray's logical CPUs for a run on a small machine: TransferQueue's controller and storage, the agent-loop and reward
# workers each take one, so Ray's default (= cores, 2 on a laptop or CI runner) leaves actors waiting forever.
LOGICAL_CPUS = 16

WORKAROUNDS = (
    Workaround(
        UPSTREAM,
        VERSION,
        target="ray.init num_cpus (ray_kwargs.ray_init.num_cpus)",
        symptom="on a 2-core machine start-up hangs: TransferQueue's and verl's actors wait for CPUs that never free",
        fix=f"{LOGICAL_CPUS} logical CPUs (cpu_overrides(num_cpus=...))",
        delete_when="never on small machines; the actors mostly wait on I/O",
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="ray.init num_gpus (verl schedules its workers and vLLM replicas on the resource GPU)",
        symptom='"Total available GPUs 0 is less than total desired GPUs 1"',
        fix="one logical GPU per FSDP worker / vLLM replica, held by a CPU process",
        delete_when="verl schedules by the platform's own resource name (PlatformCPU.ray_resource_name)",
        overrides=("+ray_kwargs.ray_init.num_gpus=1",),
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="ray.init address / dashboard",
        symptom="a run joins whatever cluster RAY_ADDRESS or a `ray start` session names, and starts a dashboard",
        fix="a fresh local cluster of the run's own (and its own _temp_dir, so its processes are findable); joining "
        "a cluster is an explicit opt-in (LTE_JOIN_RAY_CLUSTER=1 with RAY_ADDRESS: cpu_overrides(join_cluster=True))",
        delete_when="never: a CPU run should not share a cluster by accident",
        overrides=("+ray_kwargs.ray_init.address=local", "+ray_kwargs.ray_init.include_dashboard=False"),
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="subclasses of verl's Ray actor classes (AgentLoopWorkerTQ, TaskRunnerV1); on GPU too",
        symptom="a subclass with no __init__ of its own dies at actor start: "
        '"TypeError: super(type, obj): obj must be an instance or subtype of type"',
        fix="recipe/lte/agent_loop.py and recipe/lte/trainer.py define __init__ and call super().__init__",
        delete_when="Ray's actor class wrapper supports inherited __init__",
    ),
)
