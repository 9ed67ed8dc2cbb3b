"""The stderr of a multi-process run's process other than 0, passed through a small
relay process that turns jax's fatal abort into one line.

When process 0 (which hosts jax.distributed's coordination service) disappears, jax
ends every other process from C++ within a second: an `F` log line ("Terminating process
because the JAX distributed service detected fatal errors"), a C++ stack trace and
Python's thread dump, all on file descriptor 2, before any Python code can react.
`parallel.relay_stderr` points that descriptor at this relay, which passes everything
through, holds jax's C++ log lines back for a moment (HOLD_S), and on the fatal line
writes

    error: process 1 of 2 lost process 0, the jax.distributed coordinator (killed, or its host went down); ...

and drops the dump that follows. It ignores SIGINT and SIGTERM (they are the worker's
to handle) and ends when the worker's stderr closes.

    python -m mnist_cnn.stderr_relay PROCESS_ID NUM_PROCESSES   # stdin: the worker's stderr
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time
from typing import Callable

FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
LOG_LINE = re.compile(rb"^[IWEF]\d{4} ")   # absl's C++ log lines (I, W, E, F + date)
LOG_START = re.compile(rb"^([IWEF]\d{0,4}|[IWEF]\d{4} .*)$")   # may still become one
HOLD_S = 2.0   # jax's fatal line follows its warnings within milliseconds
RESUME = ("the last checkpoint is kept: start every process again with the same "
          "command to resume")


def fatal_line(me: int, n: int, fatal: bytes) -> bytes:
    """The one line that replaces jax's fatal abort of process `me` of `n`."""
    if b"stopped sending heartbeats" in fatal:
        cause = ("the jax.distributed service found another process silent (killed, or "
                 "its host went down)")
    else:
        cause = ("lost process 0, the jax.distributed coordinator (killed, or its host "
                 "went down)")
    return (f"error: process {me} of {n} {cause}; process {me} stops too; "
            f"{RESUME}\n").encode()


class Relay:
    """Bytes of the worker's stderr in (`feed`), bytes out (`write`): every line as it
    came, except that from a C++ log line on, lines are held back for HOLD_S (`tick`
    releases them). On jax's fatal line the held lines are dropped (but for the
    worker's own `error:` lines) with everything after it, and one `error:` line is
    written instead, none when the worker wrote its own. `close` writes what is held."""

    def __init__(self, me: int, n: int, write: Callable[[bytes], None]):
        self.me, self.n, self.write = me, n, write
        self.partial, self.held, self.held_since = b"", [], 0.0
        self.mid_line = False      # a line's start was passed through already
        self.dropping = False      # after jax's fatal line
        self.said_error = False

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self._line(line + b"\n")
        if self.partial and not (self.dropping or self.held) and (
                self.mid_line or not LOG_START.match(self.partial)):
            self.write(self.partial)   # a progress bar or prompt: shown at once
            self.partial, self.mid_line = b"", True

    def _line(self, line: bytes) -> None:
        if self.dropping:
            return
        if self.mid_line:
            self.mid_line = False
            self._out(line)
            return
        if FATAL in line:
            for own in [h for h in self.held if h.startswith(b"error:")]:
                self._out(own)
            self.dropping, self.held = True, []
            if not self.said_error:
                self.write(fatal_line(self.me, self.n, line))
            return
        if self.held or LOG_LINE.match(line):
            if not self.held:
                self.held_since = time.monotonic()
            self.held.append(line)
            return
        self._out(line)

    def tick(self, now: float) -> None:
        """Releases lines held for HOLD_S without a fatal line after them."""
        if self.held and now - self.held_since > HOLD_S:
            held, self.held = self.held, []
            for line in held:
                self._out(line)

    def _out(self, line: bytes) -> None:
        self.said_error = self.said_error or line.startswith(b"error:")
        self.write(line)

    def close(self) -> None:
        if not self.dropping:
            for line in self.held + [self.partial]:
                self._out(line)
        self.held, self.partial = [], b""


def main(argv) -> int:
    me, n = int(argv[1]), int(argv[2])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        try:
            out.write(data)
            out.flush()
        except OSError:   # nobody reads any more: keep draining, so the worker goes on
            pass
    relay = Relay(me, n, write)
    while True:
        if select.select([0], [], [], HOLD_S / 4)[0]:
            data = os.read(0, 1 << 16)
            if not data:
                break
            relay.feed(data)
        relay.tick(time.monotonic())
    relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
