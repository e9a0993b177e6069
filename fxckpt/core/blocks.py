"""Repeated blocks of a problem and even segments of a stack of layers; torch-free.

NOTE [ Blocks and segments ]
A *block* is one repeated layer of the model, named by its module path up to the first numeric
part: "transformer.h.3" for a node in "transformer.h.3.attn.c_attn". Every member of an
``nn.ModuleList`` / ``nn.Sequential`` is one, with whatever runs inside it. The solvers that plan
by block (`blocks`, `chain_dp`, `block_dp`) group a problem's candidates with `block_candidates`.
(The torch side names blocks of a *module* instead, in `fxckpt.manual` on one walk of its
containers: `block_stack`, the container that integer ``checkpoint_layers`` index, and
`find_blocks`, the repeated blocks the benchmark harness checkpoints.)

A *segment* is a run of consecutive layers. `even_segments` gives half-open ``(start, stop)``
index ranges, Python's slice convention: ``layers[start:stop]`` is one segment, and a segment's
stop is the next one's start. (`fxckpt.core.solvers.chain` keeps its seed API's inclusive
``(first, last)`` pairs, converted from these.)
"""

from __future__ import annotations


def block_of(scope: str) -> str | None:
    """The repeated block a module path belongs to: the path up to its first numeric part;
    None outside every block.

    Example:
        >>> block_of("transformer.h.3.attn.c_attn"), block_of("lm_head")
        ('transformer.h.3', None)
    """
    parts = scope.split(".")
    for k, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: k + 1])
    return None


def block_candidates(problem) -> tuple[dict[str, list[int]], list[int]]:
    """The problem's candidates (`RematProblem.candidates`) grouped by `block_of` their scope.

    Returns:
        ``(blocks, outside)``: each block's candidates in execution order, the blocks in the
        order their first candidate runs; and the candidates outside every block.

    Example:
        >>> from fxckpt.core.synthetic import repeated_blocks
        >>> blocks, outside = block_candidates(repeated_blocks(3, size=2))
        >>> list(blocks), [len(c) for c in blocks.values()], len(outside)
        (['h.0', 'h.1', 'h.2'], [2, 2, 2], 1)
    """
    blocks: dict[str, list[int]] = {}
    outside: list[int] = []
    for i in problem.candidates():
        block = block_of(problem.nodes[i].scope)
        if block is None:
            outside.append(i)
        else:
            blocks.setdefault(block, []).append(i)
    return blocks, outside


def even_segments(num_layers: int, num_segments: int) -> list[tuple[int, int]]:
    """``num_segments`` half-open ``(start, stop)`` ranges covering ``range(num_layers)`` in
    order, their sizes differing by at most one (the longer ones first).

    Raises:
        ValueError: ``num_segments`` is not in ``[1, max(1, num_layers)]``.

    Example:
        >>> even_segments(10, 3)
        [(0, 4), (4, 7), (7, 10)]
    """
    if not 1 <= num_segments <= max(1, num_layers):
        raise ValueError(f"num_segments must be in [1, {num_layers}], got {num_segments}")
    size, extra = divmod(num_layers, num_segments)
    bounds = [0]
    for k in range(num_segments):
        bounds.append(bounds[-1] + size + (k < extra))
    return list(zip(bounds[:-1], bounds[1:]))
