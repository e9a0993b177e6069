"""torch.fx passes of fxckpt, one step per module. Installed as `fxckpt.passes`.

capture (model -> GraphModule) -> annotate (-> a new GraphModule with a NodeCost per node, measured
on a fake step) -> to_problem (-> the torch-free RematProblem) -> [fxckpt.core.solve] -> rewrite
(GraphModule + Plan -> a new GraphModule driving the runtime's recipes).
"""

from .annotate import annotate
from .capture import Captured, capture
from .rewrite import rewrite
from .to_problem import to_problem

__all__ = ["Captured", "annotate", "capture", "rewrite", "to_problem"]
