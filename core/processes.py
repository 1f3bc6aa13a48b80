"""Child processes: one harness for `sluice run`, the benchmarks, the tests and the local actuator.

A child runs in its own session (so its own process group): a terminal's Ctrl-C, which goes to the
whole foreground process group, reaches it only through its parent, which stops the children in the
order it chooses. Its output goes to a log file, or, with none given, to the parent's stdout/stderr.

Stopping asks the main process first (SIGTERM: Celery's warm shutdown, uvicorn's graceful one; a
worker's vLLM engine processes must keep serving until the worker has finished its requests), and
only after the timeout kills the whole group. Descendants seen before a stop are killed afterwards if
still there: vLLM's engine processes outlive a SIGKILLed parent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Mapping, Sequence

import httpx
import psutil

log = logging.getLogger(__name__)


def sluice_argv(*args: str, python: str | None = None) -> list[str]:
    """The command line of a `sluice ...` child (this interpreter, so the same virtual environment)."""
    return [python or sys.executable, "-m", "sluice.cli", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers 200; False while the server is not up yet."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class Child:
    """A child process in its own session, its output in ``log_path`` (appended with ``append_log``)."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, append_log: bool = False, cwd: str | Path | None = None):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path) if log_path is not None else None
        self._log_file: IO[bytes] | None = open(self.log_path, "ab" if append_log else "wb") if self.log_path else None
        try:
            self.popen = subprocess.Popen(
                self.argv, env=None if env is None else dict(env), cwd=None if cwd is None else str(cwd),
                stdin=subprocess.DEVNULL, stdout=self._log_file,
                stderr=subprocess.STDOUT if self._log_file is not None else None, start_new_session=True)
        except OSError:
            self.close_log()
            raise
        self._seen_descendants: list[psutil.Process] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None if it is still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def send_signal(self, signum: int) -> None:
        """Signal the main process only."""
        try:
            self.popen.send_signal(signum)
        except ProcessLookupError:
            pass

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole process group (what it started in its session)."""
        self._remember_descendants()
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 30.0, *, whole_group: bool = False) -> int:
        """SIGTERM (to the main process, or with ``whole_group`` to its group); SIGKILL to the group
        after ``timeout`` seconds; then reap descendants left behind. Returns the exit status."""
        if self.alive():
            self._remember_descendants()
            if whole_group:
                self.signal_group(signal.SIGTERM)
            else:
                self.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                log.warning("%s (pid %d) did not stop within %.0f s; killing its process group",
                            self.name, self.pid, timeout)
                self.kill()
        return self.reap()

    def kill(self) -> int:
        """SIGKILL to the whole group, then reap. Returns the exit status."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        return self.reap()

    def reap(self) -> int | None:
        """Once the main process has exited: kill descendants seen earlier and close the log."""
        code = self.popen.poll()
        if code is None:
            return None
        for leftover in self._seen_descendants:
            try:
                leftover.kill()
            except psutil.NoSuchProcess:
                pass
        self._seen_descendants = []
        self.close_log()
        return code

    def close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()

    def _remember_descendants(self) -> None:
        known = {process.pid for process in self._seen_descendants}
        self._seen_descendants += [process for process in self.descendants() if process.pid not in known]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, child: Child | None = None):
    """Poll ``predicate`` until it returns a true value (returned); fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if child is not None and not child.alive():
            tail = child.log_tail()
            raise RuntimeError(f"{child.name} exited (status {child.returncode}) while waiting for {what}"
                               + (f":\n{tail}" if tail else ""))
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- children that die with their parent ---------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(expected_parent_pid: int, signum: int = signal.SIGKILL) -> bool:
    """Call first thing in a child process: the kernel sends it ``signum`` when its parent dies, however the
    parent dies (SIGKILL included). "Parent" is the thread that started the child, so start it from a
    thread that lives as long as the parent process. If the parent is already gone (it died before this
    call), the signal is sent now. Returns False where prctl is unavailable (not Linux)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != expected_parent_pid:
        os.kill(os.getpid(), signum)
    return True
