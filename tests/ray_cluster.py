"""A real multi-node Ray cluster on this machine, on loopback only, for the scoring tests and benchmarks.

Each node is a `ray start --block` process in a session of its own, with its own short temp dir and its
own ports; `stop` ends every process of those sessions (TERM, then KILL), found by session id, never by
name and never with `ray stop`. Every Ray process (nodes and the drivers a test starts with `env`) runs with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps Ray on 127.0.0.1; with it `ray start` refuses to add a
second node, so `node_main` lifts that one refusal, in this helper's own process only (see
/work/shared/notes/ray-on-loopback.md).

Run as a script (``python tests/ray_cluster.py start ...``) it is that node entry point.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Faster detection of a lost node than Ray's production defaults (a few seconds instead of ~30).
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
               "RAY_health_check_initial_delay_ms": "0", "RAY_health_check_timeout_ms": "1000"}


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every node and driver of a loopback cluster."""
    env = dict(os.environ)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(
                    [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
                "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"})
    env.update(FAST_HEALTH)
    env.update(extra or {})
    return env


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_range(width: int, avoid: set[int]) -> int:
    """The first port of ``width`` consecutive free loopback ports (worker ports of one node), none in ``avoid``."""
    for _ in range(50):
        base = _free_ports(1)[0]
        if base + width > 65000 or any(base <= p < base + width for p in avoid):
            continue
        socks = []
        try:
            for port in range(base, base + width):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no range of free loopback ports")


def _ports_outside(n: int, reserved: range, taken: set[int]) -> list[int]:
    """``n`` free loopback ports, none in ``reserved`` (a node's worker range) or ``taken``: Ray refuses to
    start a node whose component ports overlap, and free ports drawn one by one can land in that range."""
    for _ in range(50):
        ports = _free_ports(n)
        if not any(p in reserved or p in taken for p in ports):
            return ports
    raise RuntimeError(f"no {n} free loopback ports outside {reserved}")


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def stop_session(sid: int, grace_s: float = 5.0) -> None:
    """TERM every process of session ``sid``, then KILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = _session_pids(sid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _live(sid):
            time.sleep(0.1)
        if not _live(sid):
            return


def _live(sid: int) -> bool:
    for pid in _session_pids(sid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return True
        except OSError:
            continue
    return False


class Node:
    """One `ray start --block` process (and the Ray processes it starts, all in its session)."""

    def __init__(self, proc: subprocess.Popen, temp_dir: Path, log: Path) -> None:
        self.proc, self.temp_dir, self.log = proc, temp_dir, log

    @property
    def sid(self) -> int:
        return self.proc.pid  # start_new_session: the leader's pid is the session id

    def processes(self, prefix: str) -> list[int]:
        """Pids of this node's processes whose command line starts with ``prefix`` (Ray names its workers
        ``ray::<task or actor class>``)."""
        found = []
        for pid in _session_pids(self.sid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if fh.read().decode(errors="replace").startswith(prefix):
                        found.append(pid)
            except OSError:
                continue
        return found

    def kill(self) -> None:
        """What losing the machine looks like: every process of the node killed at once."""
        for pid in _session_pids(self.sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_session(self.sid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class LoopbackCluster:
    """A head and worker nodes on 127.0.0.1 (``address`` is the GCS HOST:PORT for --ray-address)."""

    def __init__(self, root: Path | None = None, object_store_mb: int = 200) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="msr", dir="/tmp"))  # short: unix socket paths
        self.object_store = object_store_mb * 1024 * 1024
        self.nodes: list[Node] = []
        self.port = _free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self._reserved: set[int] = {self.port}  # ports handed to nodes so far

    def _start(self, name: str, head: bool, num_cpus: int) -> Node:
        temp = self.root / name
        temp.mkdir(parents=True, exist_ok=True)
        base = _free_range(60, avoid=self._reserved)
        ports = _ports_outside(7, range(base, base + 60), taken=self._reserved)
        self._reserved |= {*range(base, base + 60), *ports}  # not bound until the node starts: keep them apart
        args = [sys.executable, str(Path(__file__).resolve()), "start", "--block", "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(temp),
                "--object-store-memory", str(self.object_store), "--disable-usage-stats",
                "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
                "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
                "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
                "--min-worker-port", str(base), "--max-worker-port", str(base + 59)]
        if head:
            args += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                     "--ray-client-server-port", str(ports[6])]
        else:
            args += ["--address", self.address]
        log = self.root / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=ray_env(),
                                    start_new_session=True, cwd=self.root)
        node = Node(proc, temp, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 2, wait: bool = True) -> Node:
        """Start the head; with ``wait``, return once its GCS port answers (workers may start before)."""
        node = self._start("h", True, num_cpus)
        if wait:
            self._wait_port(node)
        return node

    def add_worker(self, num_cpus: int = 2) -> Node:
        return self._start(f"w{len(self.nodes)}", False, num_cpus)

    def _wait_port(self, node: Node, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"the Ray head exited: {node.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the Ray head did not listen on {self.address} within {timeout_s} s")

    def wait_nodes(self, n: int, timeout_s: float = 90.0) -> dict[str, float]:
        """Wait until ``n`` nodes are alive (asked from a short driver process); returns {node id: CPUs}."""
        code = ("import ray, sys, time\n"
                f"ray.init(address='{self.address}', log_to_driver=False, logging_level='ERROR')\n"
                f"deadline = time.monotonic() + {timeout_s}\n"
                "while True:\n"
                "    alive = [f\"{x['NodeID']}={x['Resources'].get('CPU', 0)}\" for x in ray.nodes() if x['Alive']]\n"
                f"    if len(alive) >= {n} or time.monotonic() > deadline: break\n"
                "    time.sleep(0.2)\n"
                "print(' '.join(alive))\n")
        out = subprocess.run([sys.executable, "-c", code], env=ray_env(), capture_output=True, text=True,
                             timeout=timeout_s + 60, cwd=self.root)
        alive = dict(item.split("=") for item in out.stdout.split())
        if len(alive) < n:
            logs = "\n".join(node.log.read_text()[-1500:] for node in self.nodes)
            raise RuntimeError(f"only {len(alive)} of {n} Ray nodes came up: {out.stderr[-1500:]}\n{logs}")
        return {k: float(v) for k, v in alive.items()}

    def listening(self) -> list[str]:
        """Local addresses that the cluster's processes listen on (TCP), e.g. '127.0.0.1:6379'."""
        return listening([node.sid for node in self.nodes])

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def listening(sids: list[int]) -> list[str]:
    """Local TCP addresses that the processes of sessions ``sids`` listen on, e.g. '127.0.0.1:6379'."""
    inodes = set()
    for pid in {pid for sid in sids for pid in _session_pids(sid)}:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A" or parts[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = parts[1].split(":")
            found.append(f"{_decode_ip(addr, v6)}:{int(port, 16)}")
    return found


def _decode_ip(hexaddr: str, v6: bool) -> str:
    raw = bytes.fromhex(hexaddr)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def node_main(argv: list[str]) -> int:
    """`ray start ...` for one node, with the multi-node refusal of loopback mode lifted for this process."""
    import types

    import ray._private.ray_constants as ray_constants
    import ray.scripts.scripts as scripts

    class _Constants(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            return getattr(ray_constants, name)

    shim = _Constants("ray_constants_for_ray_start")
    shim.ENABLE_RAY_CLUSTER = True  # read only by `ray start`'s "not on Windows/OSX" check
    scripts.ray_constants = shim
    sys.argv = ["ray", *argv]
    return scripts.main()


if __name__ == "__main__":
    sys.exit(node_main(sys.argv[1:]))
