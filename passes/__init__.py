"""torch.fx passes of fxckpt: capture, annotate, rewrite. Installed as `fxckpt.passes`."""

from .annotation import annotate, to_problem
from .frontend import Captured, capture
from .remat import rewrite

__all__ = ["Captured", "annotate", "capture", "rewrite", "to_problem"]
