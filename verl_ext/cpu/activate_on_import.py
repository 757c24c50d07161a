"""Importing this module activates the CPU platform: the one module in verl_ext whose import has side effects.

verl imports it in every process that imports verl (driver, task runner, FSDP workers, vLLM server actors and
their subprocesses) when ``VERL_USE_EXTERNAL_MODULES=verl_ext.cpu.activate_on_import`` (``verl_ext.cpu.env.cpu_env``
sets it). It registers the "cpu" platform (harmless: only ``VERL_PLATFORM=cpu`` selects it) and, when it is
selected, installs the in-process patches of ``verl_ext.cpu.workarounds`` -- before any other verl module binds the
patched names.
"""

from verl_ext.cpu.platform import register_platform, selected
from verl_ext.cpu.workarounds import install_patches

register_platform()
if selected():
    install_patches()
