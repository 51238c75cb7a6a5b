"""What systemd does for the agent's unit, for tests that cannot run systemd: start the command, start it again
after ``--restart-sec`` when it exits with a failure (``Restart=on-failure``; exit 2 is not restarted:
``RestartPreventExitStatus=2``), stop it on SIGTERM. Each start is logged to stderr.

    python -m tests.support.supervise --restart-sec 0.3 --max-starts 20 -- CMD ARGS…
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restart-sec", type=float, default=0.3)
    ap.add_argument("--max-starts", type=int, default=20)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = 0
    for start in range(1, a.max_starts + 1):
        print(f"supervise: start {start}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        child = subprocess.Popen(cmd)
        rc = child.wait()
        print(f"supervise: exit {rc}", file=sys.stderr, flush=True)
        if stopping or rc in (0, 2, -signal.SIGTERM):
            return rc
        time.sleep(a.restart_sec)
    return rc


if __name__ == "__main__":
    sys.exit(main())
