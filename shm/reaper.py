"""Removes a run's segments when its launcher dies, however it dies (kill -9 included).

run.py starts `python -m shm.reaper RUN` in a session of its own with a pipe on stdin and
never writes to it. When the launcher exits, the kernel closes the pipe, the read returns
EOF, and the reaper unlinks every /dev/shm/tickpipe-RUN-* segment. A normal exit has removed
them already; the reaper then finds nothing. Segments of runs whose reaper was killed too
(e.g. the whole host rebooting) are removed by the next run's `cleanup_dead()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from shm.segment import remove_run, segment_path


def start(run: str) -> subprocess.Popen:
    """Launch the reaper for `run`; keep the returned object alive until the run is over."""
    segment_path(run, "x")  # validates the run id before anything is spawned
    return subprocess.Popen([sys.executable, "-m", "shm.reaper", run], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m shm.reaper RUN_ID  (stdin: a pipe from the launcher)", file=sys.stderr)
        return 2
    run = argv[0]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for the launcher
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    remove_run(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
