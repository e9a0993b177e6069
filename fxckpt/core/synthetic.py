"""Random `RematProblem`s for tests and benchmarks: chains, diamonds, long skips, fan-outs.

Torch-free. Each node allocates one buffer; its backward saves its inputs (a matmul), its own
output (an activation function), or nothing (an add); it passes its inputs gradients of their
size, which die in their own backward; a few nodes are random or banned.
"""

from __future__ import annotations

import random

from .problem import Buffer, Grad, Node, RematProblem

SHAPES = ("chain", "diamond", "skip", "fanout")


def random_problem(n: int, shape: str = "chain", seed: int = 0, *, ban_rate: float = 0.05) -> RematProblem:
    """A random forward graph of `n` nodes in execution order.

    Example:
        >>> p = random_problem(20, "skip", seed=1)
        >>> len(p.nodes), len(p.buffers)
        (20, 20)
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    rng = random.Random(seed)
    inputs: list[tuple[int, ...]] = []
    for i in range(n):
        if i == 0:
            ins: tuple[int, ...] = ()
        elif shape == "chain":
            ins = (i - 1,)
        elif shape == "diamond":  # blocks of 4: a -> (b, c) -> d
            k = i % 4
            ins = (i - 1,) if k in (1, 2) and i >= 1 else (i - 1, i - 2) if k == 3 else (i - 1,)
            if k == 2:
                ins = (i - 2,)
        elif shape == "skip":  # a residual stream with long skips
            ins = (i - 1,) if i < 3 or rng.random() < 0.6 else (i - 1, rng.randrange(0, i - 1))
        else:  # fanout: random earlier producers, several consumers each
            ins = tuple(sorted({i - 1, *(rng.randrange(0, i) for _ in range(rng.randint(0, 2)))}))
        inputs.append(tuple(dict.fromkeys(ins)))
    nbytes = [rng.choice((1, 2, 4, 8)) * 2**20 for _ in range(n)]
    kinds, bans = [], []
    for i in range(n):  # the draws in the order earlier versions made them (same problems per seed)
        kind = rng.random()
        kinds.append((kind, rng.choice((64, 256, 1024)) if kind < 0.45 else 1))
        bans.append(i < n - 1 and rng.random() < ban_rate)
    return _build(inputs, nbytes, kinds, bans, [""] * n, f"{shape}-{n}-{seed}")


def repeated_blocks(blocks: int, size: int = 4, seed: int = 0) -> RematProblem:
    """A chain of `blocks` identical blocks of `size` nodes (scopes "h.0", "h.1", ...: same ops,
    bytes and wiring, a residual read of the block's input in each), between an "embed" node and
    a "head" node, as a stand-in for a transformer stack.

    Example:
        >>> p = repeated_blocks(3, size=4, seed=1)
        >>> len(p.nodes), p.nodes[1].scope, p.nodes[-1].scope
        (14, 'h.0', 'head')
    """
    if blocks < 1 or size < 1:
        raise ValueError(f"blocks and size must be at least 1, got {blocks} and {size}")
    rng = random.Random(seed)
    shape = [((k - 1,) if k else (), rng.random() < 0.5 and k > 1) for k in range(size)]  # in-block reads, residual
    sizes = [rng.choice((1, 2, 4, 8)) * 2**20 for _ in range(size)]
    kinds = [(rng.random(), rng.choice((64, 256, 1024))) for _ in range(size)]
    inputs, nbytes, kind, scope = [()], [rng.choice((1, 2, 4)) * 2**20], [(0.9, 1)], ["embed"]
    for b in range(blocks):
        start = 1 + b * size
        for k, (reads, residual) in enumerate(shape):
            ins = tuple(start + j for j in reads) if reads else (start - 1,)
            inputs.append(ins + ((start - 1,) if residual else ()))
            nbytes.append(sizes[k])
            kind.append(kinds[k])
            scope.append(f"h.{b}")
    inputs.append((len(inputs) - 1,))
    nbytes.append(2**20)
    kind.append((0.5, 1))
    scope.append("head")
    n = len(inputs)
    return _build(inputs, nbytes, kind, [False] * n, scope, f"blocks-{blocks}x{size}-{seed}")


def _build(inputs, nbytes, kinds, bans, scopes, name) -> RematProblem:
    """Nodes from per-node reads, bytes, (kind draw, FLOPs per byte of a matmul), ban draws and
    scopes: one buffer each, gradients of their inputs' size that die in the inputs' backward."""
    n = len(inputs)
    nodes, grads = [], []
    for i, ins in enumerate(inputs):
        kind, mult = kinds[i]
        saves = ins if kind < 0.45 else (i,) if kind < 0.8 else ()
        grads.extend(Grad(nbytes[a], i, a) for a in ins)
        last = i == n - 1
        nodes.append(Node(
            name=f"n{i}", op="matmul" if kind < 0.45 else "act" if kind < 0.8 else "add",
            inputs=ins, scope=scopes[i], creates=(i,), value=(i,), saves=saves, requires_grad=True,
            flops=nbytes[i] * (mult if kind < 0.45 else 1) // 4,
            bwd_transient_bytes=sum(nbytes[a] for a in ins), is_output=last,
            ban="graph output" if last else ("random ban" if bans[i] else None),
        ))
    return RematProblem(tuple(nodes), tuple(Buffer(f"n{i}:0", nbytes[i], i) for i in range(n)), tuple(grads),
                        name=name)
