"""Where JAX runs when nobody said, chosen at `import odeplm`.

libtpu (installed with the `tpu` extra, for the ahead-of-time proof on compile-only devices) probes for TPU
chips whenever JAX starts its backends and, on a machine without them, prints error lines (`Failed to find host
bounds`, `E0000 ... INVALID_ARGUMENT`) before falling back to the CPU. So where no platform was asked for
(`JAX_PLATFORMS` or `jax.config.jax_platforms`), this host has no TPU chips and no other accelerator plugin is
installed, JAX is told to use the CPU it would have used anyway. On a TPU host, with a GPU plugin, or with
`JAX_PLATFORMS` set (the opt-out: `JAX_PLATFORMS=tpu,cpu` keeps JAX's own probing), nothing changes; once JAX
has started its backends the choice has no effect.
"""

from __future__ import annotations

import glob
import importlib.util

import jax

GOOGLE_PCI_VENDOR = "0x1ae0"  # a Cloud TPU host shows its chips as Google PCI devices


def tpu_chips_here() -> bool:
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        with open(path) as f:
            if f.read().strip() == GOOGLE_PCI_VENDOR:
                return True
    return False


def cpu_unless_asked() -> None:
    """The CPU where JAX would only reach it through libtpu's failed probe; see the module docstring."""
    other_plugins = importlib.util.find_spec("jax_plugins") is not None
    if not jax.config.jax_platforms and not tpu_chips_here() and not other_plugins:
        jax.config.update("jax_platforms", "cpu")
