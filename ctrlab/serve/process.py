"""Run `ctrlab serve` as a child process on a loopback port: start, wait until ready, stop.

Used by the demo, the serving benchmark and the tests.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(bundle: str | Path, *, port: int | None = None, args: Sequence[str] = (),
                 timeout: float = 60.0, capture: bool = True) -> tuple[subprocess.Popen, str]:
    """Start ``ctrlab serve BUNDLE`` on ``HOST:port`` and wait until ``/ready`` answers 200.

    Returns the process and its base URL. ``capture``: keep the server's output (shown in the
    error if it fails to start) instead of letting it reach this process's terminal."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "ctrlab", "serve", str(bundle), "--host", HOST, "--port", str(port), *args]
    out = subprocess.PIPE if capture else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if capture else None)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            text = proc.stdout.read().decode(errors="replace")[-3000:] if capture and proc.stdout else ""
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready\n{text}")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=1) as resp:
                if resp.status == 200:
                    return proc, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the server did not become ready in {timeout:.0f} s")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process in MB (Linux /proc): ``VmRSS`` now and ``VmHWM``, its peak."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out
