"""A proven lower bound on the simulated peak of every plan: what the simulator holds at some step
whatever is recomputed.

NOTE [ A floor no plan goes below ]
`min_peak_plan` is a search; nothing tells it when to stop but running out of moves, and an
infeasible budget cost the whole search (the zoo's U-Net at 30%: 87 CPU s). Some bytes are live
in every plan: at each forward step, the buffers created and not yet read for the last time
(unless fused), the step's transient and the saved tensors that are nobody's output; past
forward, the loss, the gradients (plan-independent), the buffers no plan frees early (graph
outputs, what banned producers' backwards save) and, at each backward step, the buffers that
step itself saves (kept, or rematerialized for it) and its transient. Each is counted exactly as
`fxckpt.core.simulate` counts it, with the fewest holders any plan can have, so the maximum over
steps bounds every plan's peak from below (the tests check it against random plans and the
exhaustive floor). Where a plan reaches it, that plan is the floor and the search can stop; a
budget below it is infeasible without any search. It leaves out what recomputation adds (a
replay's inputs and transient, recipes' holds), so on graphs whose floor is set by those it is
loose (ResNet-50: 0.18 of the un-checkpointed peak against a floor of 0.31); on GPT-2 small it
is the floor (0.468).
"""

from __future__ import annotations

from .problem import RematProblem
from .simulate import step_facts

__all__ = ["peak_lower_bound"]


def peak_lower_bound(problem: RematProblem) -> int:
    """Bytes every plan's simulated peak reaches (NOTE [ A floor no plan goes below ]).

    Example:
        >>> from fxckpt.core.synthetic import random_problem
        >>> from fxckpt.core.simulate import simulate
        >>> p = random_problem(20, "skip", seed=1)
        >>> peak_lower_bound(p) <= simulate(p, p.candidates()).peak_bytes
        True
    """
    st, nodes = step_facts(problem), problem.nodes
    left = [s + o for s, o in zip(st.saved_by, st.output_holds)]  # holders past forward, as the simulator counts
    pinned = [bool(o) or (bool(s) and nodes[p].ban is not None)  # held past forward in every plan
              for s, o, p in zip(st.saved_by, st.output_holds, st.producer)]
    live = best = 0
    frees: list[list[int]] = [[] for _ in nodes]
    for t, node in enumerate(nodes):
        for b in node.creates:
            if pinned[b] or not st.fused[b]:  # a fused buffer exists only where held (NOTE [ Fused buffers ])
                live += st.nbytes[b]
                if not pinned[b]:
                    frees[st.forward_last[b]].append(b)
        if node.requires_grad:
            live += node.extra_saved_bytes
        best = max(best, live + node.transient_bytes)
        live -= sum(st.nbytes[b] for b in frees[t])
    live += problem.loss_bytes
    for c in problem.backward_order:
        node, saves = nodes[c], st.saves[c]
        own = sum(st.nbytes[b] for b in set(saves) if not pinned[b] and not st.replay_free[b] and left[b] > 0)
        best = max(best, live + own + node.bwd_transient_bytes)
        live += st.born[c] - st.dying[c]
        for b in saves:
            left[b] -= 1
            if pinned[b] and left[b] == 0:
                live -= st.nbytes[b]
        live -= node.extra_saved_bytes
    return best
