"""Calibration on a Ray cluster: one task per shard of the data, each reading its own shard, merged in a tree.

Only the model (once, through Ray's object store), the options and the calibration states travel; the data is
read where each task runs, so a path must be readable there (one machine, a shared file system, or the same
path on every node). Ray is an optional extra (`pip install "trtptq[cluster]"`), imported only here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from trtptq.core.errors import TrtptqError
from trtptq.core.options import check_count
from trtptq.data.sources import source_path


@dataclass(frozen=True)
class Cluster:
    """Where sharded work runs: `workers` shards (a local Ray cluster of that many CPUs for the run), or an
    existing cluster at `address` ("auto" after `ray start`, "ray://head:10001", KubeRay's head service)."""

    workers: int | None = None  # None with an address: one shard per CPU of the cluster
    address: str | None = None

    def __post_init__(self) -> None:
        check_count("--workers", self.workers, "worker")
        if self.workers is None and self.address is None:
            raise TrtptqError("a cluster needs --workers N (a local Ray cluster) or --ray-address ADDR.")
        if importlib.util.find_spec("ray") is None:
            flag = f"--workers {self.workers}" if self.workers else f"--ray-address {self.address}"
            raise TrtptqError(f"{flag} needs Ray, which is not installed; pip install \"trtptq[cluster]\" "
                              "(or leave the option out to calibrate in this process).")


#: Ray's client proxy failing to start the server of one ray:// client, a race inside it ("Other threads are currently
#: calling into gRPC, skipping fork() handlers"; once in four runs of the ray:// test): a second connection starts another
SPECIFIC_SERVER_FAILED = "Starting Ray client server failed"


@contextlib.contextmanager
def connected(cluster: Cluster | None) -> Iterator:
    """The `ray` module, connected: to `cluster.address`, to an already initialized Ray, or to a local cluster
    started for this run (and stopped after it); None (and no Ray) without a cluster. Steps of one run inside it
    share its connection."""
    if cluster is None:
        yield None
        return
    import ray

    if ray.is_initialized():
        yield ray
        return
    if cluster.address:
        _check_reachable(cluster.address)
        for attempt in range(2):
            try:
                ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
                break
            except ConnectionError as e:  # ray.init's for no cluster there, a client that timed out, a refused token
                if attempt == 0 and SPECIFIC_SERVER_FAILED in str(e):
                    ray.shutdown()
                    continue
                raise TrtptqError(f"--ray-address {cluster.address}: cannot reach a Ray cluster there ({e}). Check "
                                  "it with `ray status` on the head; a ray:// address names the head's client server "
                                  "port (`ray start --head --ray-client-server-port`, 10001 by default); a cluster "
                                  "with token authentication needs RAY_AUTH_MODE=token (and its token) where trtptq "
                                  "runs.") from None
    else:
        # "local": a cluster of its own even where `ray start` left one to find (ray.init's default would join it)
        ray.init(address="local", num_cpus=cluster.workers, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A host:port address (ray:// or the head's GCS) that nothing answers at, refused in one line now: Ray itself
    retries a GCS address for minutes and a client one for 30 s before it says so."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form only Ray reads
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise TrtptqError(f"--ray-address {address}: nothing answers at {host}:{port} ({e.strerror or e}). Give the "
                          "head's GCS address (host:6379 by default, as `ray start --head` prints it), its client "
                          "server as ray://host:10001, or auto on a node of the cluster.") from None


def portable(data):
    """`data` as a worker reads it: a path (or loader script) made absolute, as workers do not share the driver's
    working directory; anything else as it is (pickled to the workers)."""
    if not isinstance(data, (str, os.PathLike)):
        return data
    path, function = source_path(data)
    return f"{path.resolve()}:{function}" if path.suffix == ".py" else str(path.resolve())


def map_merge(cluster: Cluster, task: Callable, shared: Sequence, shards: Callable[[int, int], Sequence],
              merge: Callable, gpus: float = 0) -> object:
    """`merge` over `task(*shared, *shards(k, count))` for k < count, the cluster's shard count, each on a worker
    (with `gpus` GPUs of its own), merged pairwise in a tree of tasks: the driver receives one result. `shared`
    goes into the object store once. A user error raised in a task is raised here, as itself."""
    with connected(cluster) as ray:
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) < gpus:  # Ray would keep such tasks pending, forever
            name = f"the Ray cluster at {cluster.address}" if cluster.address else "this machine (--workers)"
            raise TrtptqError(f"--runner tensorrt runs an FP32 engine on a GPU of its own in each Ray task, and "
                              f"{name} has no GPU; leave --runner out to calibrate in ONNX Runtime on the CPUs, or "
                              "give a cluster whose nodes have GPUs.")
        count = workers(ray, cluster)
        refs = [ray.put(value) for value in shared]
        remote_task, remote_merge = ray.remote(num_cpus=1, num_gpus=gpus)(task), ray.remote(num_cpus=1)(merge)
        level = [remote_task.remote(*refs, *shards(k, count)) for k in range(count)]
        while len(level) > 1:
            pairs = [remote_merge.remote(a, b) for a, b in zip(level[::2], level[1::2])]
            level = pairs + level[len(pairs) * 2:]
        with user_errors(ray):
            return ray.get(level[0])


def workers(ray, cluster: Cluster) -> int:
    """How many tasks run at once: --workers, else one per CPU of the cluster."""
    return cluster.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def user_errors(ray) -> Iterator[None]:
    """A user error (TrtptqError) raised in a task or actor comes out here as itself, not wrapped in Ray's."""
    try:
        yield
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, TrtptqError):
            raise e.cause from None
        raise
