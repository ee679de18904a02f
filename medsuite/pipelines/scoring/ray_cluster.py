"""Connecting the scoring driver to Ray: the address check, a loopback-only local cluster, and a preflight
that every node can run medsuite and see the data.

Errors that mean "this run cannot start" are `ClusterError` (a `ValueError`); the runner turns them into
exit code 3 with the message, before any run row is written.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("medsuite.scoring")

# Ray reads this when it is imported: "0" keeps every Ray process of a local cluster on 127.0.0.1
# (otherwise Ray maps the loopback address to the host's outward one and listens on all interfaces).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

JOB_SUBMIT_HINT = (
    "run the command on a node of the cluster with --ray-address auto (or HEAD:6379), or submit it as a Ray "
    "job, which runs the driver on the head node: ray job submit --address http://HEAD:8265 -- "
    "medsuite score ... --engine ray --ray-address auto"
)


class ClusterError(ValueError):
    """The Ray cluster cannot be used for this run (address, connection, a node without medsuite or data)."""


@dataclass
class Session:
    """A connection to Ray made for one scoring run; `close` disconnects (and stops a cluster started here)."""

    address: str | None
    started_here: bool
    connected_here: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)
    discover_stats: Counter = field(default_factory=Counter)  # files whose headers each node read

    @property
    def total_cpus(self) -> int:
        return int(sum(n["Resources"].get("CPU", 0) for n in self.nodes))

    @property
    def total_gpus(self) -> int:
        return int(sum(n["Resources"].get("GPU", 0) for n in self.nodes))

    def close(self) -> None:
        if self.connected_here:
            import ray

            ray.shutdown()
            self.connected_here = False


def alive_nodes() -> list[dict[str, Any]]:
    """Ray's node records of the nodes that are alive (with CPUs or GPUs)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU") or n["Resources"].get("GPU"))]


def check_address(address: str, timeout_s: float) -> None:
    """Refuse what cannot work (Ray Client ``ray://``), and check that ``HOST:PORT`` answers within the timeout."""
    if address.startswith("ray://"):
        raise ClusterError(
            f"--ray-address {address}: Ray Client (ray://) addresses are not supported, because Ray's "
            "streaming and object transfer that scoring relies on does not run through Ray Client "
            f"(ray-project/ray#48682); {JOB_SUBMIT_HINT}")
    if address in ("auto", "local"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(f"--ray-address {address}: expected HOST:PORT of the head node's GCS (e.g. head:6379) or "
                           "'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterError(f"--ray-address {address}: no Ray cluster answers there ({reason} after at most "
                           f"{timeout_s:g} s); start it with `ray start --head` on that machine, or check the "
                           "host and the port (the GCS port, 6379 by default)") from None


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def _init_with_timeout(kwargs: dict[str, Any], timeout_s: float, what: str) -> None:
    """``ray.init(**kwargs)`` that gives up after ``timeout_s`` instead of retrying for many minutes."""
    import ray

    outcome: dict[str, BaseException | None] = {}

    def target() -> None:
        try:
            ray.init(**kwargs)
            outcome["error"] = None
        except BaseException as exc:  # reported to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="medsuite-ray-init", daemon=True)
    quiet = _DropMessage("SIGTERM handler is not set")  # Ray's note for init off the main thread: expected here
    ray_log = logging.getLogger("ray._private.worker")
    ray_log.addFilter(quiet)
    try:
        thread.start()
        thread.join(timeout_s)
    finally:
        ray_log.removeFilter(quiet)
    if thread.is_alive():
        raise ClusterError(f"{what}: Ray did not connect within {timeout_s:g} s (is it a Ray head node's GCS port, and "
                           "the same Ray version as here?); raise --ray-timeout if the cluster is just slow")
    error = outcome.get("error")
    if error is not None:
        raise ClusterError(f"{what}: Ray could not connect: {type(error).__name__}: {error}") from error


def connect(address: str | None, *, num_cpus: int, timeout_s: float = 30.0) -> Session:
    """Connect to the cluster at ``address`` (``HOST:PORT`` or ``auto``), or start a local one with
    ``num_cpus`` CPUs on loopback only when ``address`` is None. Reuses a Ray this process already joined."""
    if address:
        check_address(address, timeout_s)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return Session(address, started_here=False, connected_here=False, nodes=_nodes_or_fail(address))
    if address:
        kwargs: dict[str, Any] = {"address": address}
        what = f"--ray-address {address}"
        started = False
    else:
        _require_loopback()
        kwargs = {"num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        what = "local Ray"
        started = True
    import ray

    kwargs.update(log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    if started:
        # in this thread: Ray ties the processes it starts to the life of the thread that starts them
        try:
            ray.init(**kwargs)
        except Exception as exc:
            raise ClusterError(f"{what}: Ray could not start: {type(exc).__name__}: {exc}") from exc
    else:
        _init_with_timeout(kwargs, timeout_s, what)
    session = Session(address, started_here=started, connected_here=True)
    try:
        session.nodes = _nodes_or_fail(address)
    except BaseException:
        ray.shutdown()
        raise
    return session


def _nodes_or_fail(address: str | None) -> list[dict[str, Any]]:
    nodes = alive_nodes()
    if not nodes:
        raise ClusterError(f"--ray-address {address}: the cluster has no live node with CPUs or GPUs")
    return nodes


def _require_loopback() -> None:
    """A local cluster must listen on loopback only; Ray decides that when it is imported."""
    if "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    from ray._private import ray_constants  # the one flag Ray offers for this; read, never changed

    if ray_constants.ENABLE_RAY_CLUSTER:
        raise ClusterError(
            "--engine ray without --ray-address starts a local Ray, which would listen on every network interface "
            f"of this machine because Ray was imported before medsuite could set {LOOPBACK_ENV}=0; set that "
            "variable before Ray is imported, give --ray-address of a running cluster, or use --engine local")


def preflight(session: Session, paths: Sequence[str], *, timeout_s: float) -> None:
    """Run one tiny task on every node: medsuite must import there, at this version, and see ``paths``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from medsuite import __version__

    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(list(paths)) for n in session.nodes}
    ready, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    problems = []
    by_ref = {ref: node for node, ref in refs.items()}
    for ref in ready:
        node = by_ref[ref]
        ip = next((n.get("NodeManagerAddress", "?") for n in session.nodes if n["NodeID"] == node), "?")
        try:
            info = ray.get(ref)
        except Exception as exc:  # e.g. ModuleNotFoundError: medsuite is not installed there
            cause = getattr(exc, "cause", None) or exc
            problems.append(f"node {node[:8]} ({ip}) cannot run medsuite: {type(cause).__name__}: {cause}")
            continue
        if info["medsuite"] != __version__:
            problems.append(f"node {node[:8]} ({ip}) has medsuite {info['medsuite']}, the driver {__version__}")
        if info["missing"]:
            problems.append(
                f"node {node[:8]} ({ip}) cannot see {info['missing'][0]}"
                + (f" (and {len(info['missing']) - 1} more)" if len(info["missing"]) > 1 else "")
                + ": the Ray engine needs the bundle and the inputs at the same paths on every node (shared "
                  "storage), or --ray-ship-inputs to send them from the driver")
    for ref in pending:
        log.warning("node %s did not answer a 0-CPU probe within %g s; it may be overloaded", by_ref[ref][:8],
                    timeout_s)
    if problems:
        raise ClusterError("; ".join(problems))


def probe_node(paths: list[str]) -> dict[str, Any]:
    """Runs on a node: its id, medsuite version, and which of ``paths`` it cannot see."""
    import ray

    from medsuite import __version__

    return {"node": ray.get_runtime_context().get_node_id(), "medsuite": __version__,
            "missing": [p for p in paths if not os.path.exists(p)]}
