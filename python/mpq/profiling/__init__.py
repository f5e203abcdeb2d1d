"""Step 3, profile: the gain of every configuration of every sub-graph on a backend (``backends``), timed
jointly inside the running model (``timing``) or computed from MACs and bytes (``profiler`` drives both)."""
from .backends import BACKENDS, BackendUnavailable
from .profiler import enumerate_configs, profile

__all__ = ["BACKENDS", "BackendUnavailable", "enumerate_configs", "profile"]
