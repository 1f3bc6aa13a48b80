"""Pause every Sluice, test, vLLM and Redis process at once, now and then, as a starved host does.

The development machine (and CI's) was seen to pause every process together for up to ~8 s during
`make test` (docs/architecture.md). Run this beside the suite to meet such stalls on purpose:

    .venv/bin/python -m tests.pause_processes --log /tmp/pauses.log &
    .venv/bin/python -m pytest -q -m integration tests/integration
    kill %1

It only sends SIGSTOP / SIGCONT to processes whose command line names them; everything resumes when it
exits (Ctrl-C or SIGTERM included).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time

import psutil

MATCH = ("pytest", "sluice", "VLLM", "celery", "redis-server", "valkey-server")


def targets() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "name"]):
        if process.info["pid"] == os.getpid():
            continue
        command = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
        if "pause_processes" not in command and any(word in command for word in MATCH):
            found.append(process)
    return found


def send(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN", "MAX"),
                        help="seconds between pauses (uniform)")
    parser.add_argument("--pause", type=float, nargs=2, default=(2.0, 8.0), metavar=("MIN", "MAX"),
                        help="seconds each pause lasts (uniform)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log", default=None, help="append one line per pause here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    paused: list[psutil.Process] = []
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(rng.uniform(*args.gap))
            paused, seconds = targets(), rng.uniform(*args.pause)
            send(paused, signal.SIGSTOP)
            time.sleep(seconds)
            send(paused, signal.SIGCONT)
            if args.log:
                with open(args.log, "a") as log:
                    log.write(f"{time.strftime('%H:%M:%S')} paused {len(paused)} processes for {seconds:.1f} s\n")
            paused = []
    except KeyboardInterrupt:
        pass
    finally:
        send(paused, signal.SIGCONT)


if __name__ == "__main__":
    main()
