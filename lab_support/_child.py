"""Exec a command that the kernel stops when the given parent process dies (Linux).

Usage: ``python -m lab_support._child PARENT_PID -- COMMAND...``. The
death signal survives ``execve``, so it applies to the command itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m lab_support._child PARENT_PID -- COMMAND...")
    parent_pid = int(argv[0])
    command = argv[2:]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed with errno {ctypes.get_errno()}")

    # The parent may have died before prctl ran; then nobody would signal us.
    if os.getppid() != parent_pid:
        sys.exit(0)

    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
