"""One ONNX Runtime thread pool for the whole process (`din-runtime serve --thread-pool shared`): a server's every
model, version and graph runs on it, so loading a third model adds no threads to compete for the cores (each
session's own pool would). Not the default: ONNX Runtime's global pool keeps spinning for tens of milliseconds
after each call (its spin control is not in the Python API; `session.force_spinning_stop` stops only a session's
own pool), which took a third off a server's single-row throughput (Results: serving).

ONNX Runtime sizes its global pools once, before its environment exists (the first session creates it), and from
then on every session of the process must run on them (`use_per_session_threads = False`; one that asks for its
own pool is refused). So a process that shares does so from its start: `din-runtime serve` calls `share` before
loading anything, and every session the runtime creates is marked (providers.create_session).
"""

from __future__ import annotations

import threading

import onnxruntime as ort

MODES = ("shared", "per-session")  # din-runtime serve --thread-pool
_LOCK = threading.Lock()
_size: int | None = None  # the shared pool's intra-op threads once `share` has run (0: ONNX Runtime's own choice)


def share(threads: int | None) -> None:
    """Run every session of this process on one intra-op pool of `threads` threads (None: one per physical core,
    ONNX Runtime's default). Once per process, before its first session; asking again for the same size is a no-op."""
    global _size
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    size = 0 if threads is None else threads
    with _LOCK:
        if _size is not None:
            if _size != size:
                raise ValueError(f"this process already shares one pool of {_size or 'default'} threads; it cannot be resized")
            return
        ort.set_global_thread_pool_sizes(size, 1)  # inter-op: graphs run sequentially (ORT_SEQUENTIAL)
        _size = size


def shared() -> bool:
    """Whether this process runs its sessions on the one shared pool."""
    return _size is not None


def mark(options: ort.SessionOptions) -> ort.SessionOptions:
    """Session options that run on the shared pool where the process has one (their own thread counts then count
    for nothing); unchanged otherwise."""
    if _size is not None:
        options.use_per_session_threads = False
    return options
