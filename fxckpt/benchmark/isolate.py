"""Running one benchmark row in a process of its own, so that a crash inside a compiler costs
that row only (`call_isolated`).

NOTE [ Compiled rows run in their own process ]
torch's compilers can kill the process: a TinyCNN bench run segfaulted twice inside torch's own
`compile budget 0.5` row (its min-cut partitioner), taking every row after it and the results
file with it. So `compare_strategies` runs each compiled row in a spawned child (`spawn`, not
`fork`: the parent has run OpenMP regions and may hold locks of other threads, and a fresh child
also starts from an empty Dynamo and inductor state) and turns a dead child into a row status
that names the signal. The child gets the model, the example, the reference step and the rows so
far by pickle; what cannot travel (a model class defined in a notebook's ``__main__``) runs in
the parent as before.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["CannotIsolate", "ChildCrashed", "call_isolated"]


class CannotIsolate(Exception):
    """The function or its arguments cannot be sent to a child process (pickle failed)."""


class ChildCrashed(Exception):
    """The child process died before it answered (a signal, or exit without a result)."""

    def __init__(self, exitcode: int | None):
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                why = signal.Signals(-exitcode).name
            except ValueError:
                why = f"signal {-exitcode}"
        else:
            why = f"exit {exitcode}"
        super().__init__(why)


def _child(conn, payload: bytes) -> None:
    try:
        fn, args = pickle.loads(payload)
    except Exception as e:  # e.g. a class the child cannot import
        conn.send(("cannot", f"{type(e).__name__}: {e}"))
        return
    try:
        answer = ("ok", fn(*args))
    except BaseException as e:  # raised again in the parent
        answer = ("raised", e)
    try:
        conn.send(answer)
    except Exception as e:  # an unpicklable result or exception
        conn.send(("raised", RuntimeError(f"{answer[0]} {answer[1]!r} could not be sent back: {e}")))


def call_isolated(fn: Callable[..., Any], *args) -> Any:
    """``fn(*args)`` in a fresh spawned Python process; its return value.

    ``fn`` must be a module-level function, and it, its arguments and its result picklable. An
    exception ``fn`` raises is raised here.

    Raises:
        CannotIsolate: ``fn`` or ``args`` cannot be pickled here or unpickled in the child.
        ChildCrashed: the child died without answering (``exitcode``: minus the signal number).

    Example:
        >>> import operator
        >>> call_isolated(operator.add, 2, 3)
        5
    """
    try:
        payload = pickle.dumps((fn, args))
    except Exception as e:
        raise CannotIsolate(f"{type(e).__name__}: {e}") from e
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, payload))  # not a daemon: inductor may start workers
    process.start()
    send.close()  # ours: so that recv() sees EOF when the child dies
    try:
        kind, value = receive.recv()
    except EOFError:
        kind, value = "crashed", None
    finally:
        receive.close()
        process.join()
    if kind == "crashed":
        raise ChildCrashed(process.exitcode)
    if kind == "cannot":
        raise CannotIsolate(value)
    if kind == "raised":
        raise value
    return value
