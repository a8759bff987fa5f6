"""SIGTERM unwinds a planning command (cli._run_stoppable), also where SIGINT is ignored.

A background job of a non-interactive shell starts with SIGINT ignored; asyncio.Runner then
installs no SIGINT handler, and a KeyboardInterrupt raised inside one of uvloop's stream
callbacks is logged and swallowed, so the run went on after SIGTERM. Each case runs in its own
process: signal dispositions are process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

_SCRIPT = """
import argparse, asyncio, signal, socket, sys, time
import uvloop
from batchserve import cli

sigint, where = sys.argv[1], sys.argv[2]
if sigint == "ignored":
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Reader(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        signal.raise_signal(signal.SIGTERM)  # its handler runs here, inside uvloop's read callback


async def main() -> int:
    ours, theirs = socket.socketpair()
    await asyncio.get_running_loop().connect_accepted_socket(Reader, ours)
    theirs.send(b"x")
    await asyncio.sleep(20)  # the signal should end the run long before this
    return 0


def command(_args: argparse.Namespace) -> int:
    if where == "loop":
        return uvloop.run(main())
    signal.raise_signal(signal.SIGTERM)
    time.sleep(20)
    return 0


sys.exit(cli._run_stoppable(command, argparse.Namespace()))
"""


@pytest.mark.parametrize("where", ["loop", "no-loop"])
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_ends_the_command_with_143(sigint: str, where: str) -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, sigint, where], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 143, (done.returncode, done.stderr[-2000:])
