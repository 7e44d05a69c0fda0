"""The ``CTXRELAY_TREE_FILE`` path, opened so that writing it never blocks the process.

A plain ``open(path, "a")`` of a FIFO nobody reads blocks until a reader comes: the
export thread hangs, and the SDK's shutdown waits 30 s for it at exit.  Here the path is
opened non-blocking (a FIFO without a reader fails at once, and the exporter falls back to
stderr with a warning), and a write to a reader that does not keep up waits at most
:data:`WRITE_TIMEOUT` before giving up with :class:`TimeoutError`.  Regular files and
terminals behave as with ``open``.
"""

from __future__ import annotations

import os
import select
import time

__all__ = ["WRITE_TIMEOUT", "TreeFile"]

#: Longest a write waits for a slow reader (a FIFO, a pipe) before the tree is dropped.
WRITE_TIMEOUT = 1.0


class TreeFile:
    """A write-only text target at ``path`` (appended to, UTF-8), never blocking for long."""

    def __init__(self, path: str) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NONBLOCK", 0)
        self._fd: int | None = os.open(path, flags, 0o666)

    def write(self, text: str) -> int:
        data = memoryview(text.encode("utf-8"))
        deadline = time.monotonic() + WRITE_TIMEOUT
        while data:
            fd = self._fd
            if fd is None:
                raise ValueError("write to a closed tree file")
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"the reader took more than {WRITE_TIMEOUT:g} s to take the tree"
                    ) from None
                select.select([], [fd], [], remaining)
        return len(text)

    def flush(self) -> None:
        """Nothing buffered: each write went to the file."""

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
