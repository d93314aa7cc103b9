"""``accelerate.launchers``: start a training function in several processes from Python
(a notebook, a test). Defined in :mod:`surge.launch.notebook`."""

from surge.launch.notebook import debug_launcher, notebook_launcher

__all__ = ["debug_launcher", "notebook_launcher"]
