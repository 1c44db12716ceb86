"""A smoke sweep on a two-node Ray cluster on this machine, joined through RAY_ADDRESS.

`ray start --head` and a second `ray start --address` on this host, with one CPU each, so the smoke sweep's
two concurrent one-CPU trials have to use both nodes; both write to one storage path (one host). Ray gives
both nodes the host's address even when told 127.0.0.1 (services.resolve_ip_for_localhost), so the cluster
uses Ray's token authentication, with a token of its own. Each node runs as `ray start --block`, which stops
exactly the processes it started when it gets SIGTERM: `ray stop` would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import psutil
import pytest
import ray
from ray._private import state as ray_state
from ray._private.authentication_test_utils import reset_auth_token_state
from test_mlflow_outage import ray_trials
from test_sweep_e2e import smoke_config, sweep_env

from tracking import names

pytestmark = pytest.mark.slow
RAY_CLI = Path(sys.executable).parent / "ray"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now (held together while asking, so none is given twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))  # free on every interface: Ray listens on the host address
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Node:
    """One Ray node: a `ray start --block` process and what it starts (GCS, raylet, agents, workers)."""

    def __init__(self, log: Path, args: list[str], env: dict[str, str]) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen([str(RAY_CLI), "start", "--block", *args], stdout=out,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.children: dict[int, psutil.Process] = {}

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.children.setdefault(child.pid, child)  # psutil notices if a pid is reused later

    def stop(self) -> list[int]:
        """Stop this node and all it started; the pids that had to be killed after its own shutdown."""
        self.remember_children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        _, alive = psutil.wait_procs(list(self.children.values()), timeout=30)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        return [process.pid for process in alive]


def wait_for(what: str, ready: Any, nodes: list[Node], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        dead = [node for node in nodes if node.process.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(node.log.read_text()[-2000:] for node in nodes)
            pytest.fail(f"Ray cluster: {what} did not happen:\n{logs}")
        time.sleep(0.5)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_sweep_on_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path) -> None:
    # A short private temp dir: Ray's socket paths under it must stay within the 107-character limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="sbray-", dir="/tmp"))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # every process of the cluster
    env = {**os.environ, **auth, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # stop at once on SIGTERM
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    gcs, dashboard, *ports = free_ports(2 + 2 * 6)
    address = f"127.0.0.1:{gcs}"

    def node_args(p: list[int]) -> list[str]:
        # Every port of its own: two nodes on one host must not both take a default port.
        return ["--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}",
                "--object-store-memory=100000000", "--disable-usage-stats", "--min-worker-port=0",
                "--max-worker-port=0", f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
                f"--dashboard-agent-listen-port={p[2]}", f"--dashboard-agent-grpc-port={p[3]}",
                f"--metrics-export-port={p[4]}", f"--runtime-env-agent-port={p[5]}"]

    nodes: list[Node] = []
    leftovers: list[int] = []
    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    saved = {key: os.environ.get(key) for key in (*auth, "RAY_AUTH_TOKEN_PATH")}
    try:
        head = ["--head", f"--port={gcs}", "--include-dashboard=false", f"--dashboard-port={dashboard}"]
        nodes.append(Node(tmp_path / "head.log", head + node_args(ports[:6]), env))
        wait_for("the head's GCS listening", lambda: listening(gcs), nodes)
        nodes.append(Node(tmp_path / "worker.log", [f"--address={address}", *node_args(ports[6:])], env))
        # This test's own driver, which only reads the cluster: with the cluster's token (Ray reads it once).
        os.environ.update(auth)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        reset_auth_token_state()
        ray.init(address=address, log_to_driver=False)
        wait_for("two nodes alive", lambda: sum(n["Alive"] for n in ray.nodes()) == 2, nodes)
        alive = [n for n in ray.nodes() if n["Alive"]]
        node_ids = {n["NodeID"] for n in alive}
        assert {n["Resources"].get("CPU") for n in alive} == {1.0}

        cfg = smoke_config(tmp_path, "cluster")
        cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "--budget", "5", "--config", str(cfg)]
        node_of: dict[int, str] = {}  # worker pid -> node id, from the actor table while the sweep runs
        with (tmp_path / "out.txt").open("w") as out:
            sweep_vars = {**sweep_env(tmp_path), **auth, "RAY_ADDRESS": address}
            sweep = subprocess.Popen(cmd, cwd=tmp_path, env=sweep_vars, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 900
            while sweep.poll() is None and time.monotonic() < deadline:
                node_of.update(actor_nodes())
                time.sleep(1)
            if sweep.poll() is None:
                sweep.kill()
            sweep.wait()
        node_of.update(actor_nodes())
        output = (tmp_path / "out.txt").read_text()
        assert sweep.returncode == 0, output[-4000:]
        for node in nodes:
            node.remember_children()

        trials = ray_trials(tmp_path / "runs" / "sweeps" / "cluster")
        assert len(trials) == 4 and all(results for results in trials.values())
        where = {trial: {node_of.get(r["pid"]) for r in results} for trial, results in trials.items()}
        assert all(None not in found for found in where.values()), f"trial workers without a node: {where}"
        assert set().union(*where.values()) == node_ids, f"trials did not use both nodes: {where}"
        # The storage both nodes wrote to: every trial's final checkpoint, and MLflow has every trial.
        assert all(results[-1].get("checkpoint_dir_name") for results in trials.values())
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("cluster")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        roles = {r.data.tags.get(names.TAG_TRIAL_ID): r.data.tags.get(names.TAG_ROLE) for r in runs}
        assert {trial for trial, role in roles.items() if role == "trial"} == set(trials)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()
        for node in reversed(nodes):  # the worker node first, then the head
            leftovers += node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftovers, f"processes of the test's Ray nodes outlived them and were killed: {leftovers}"
    assert all(node.process.poll() is not None for node in nodes)


def actor_nodes() -> dict[int, str]:
    """Worker pid -> node id of every actor the cluster has seen (Tune runs each trial in an actor).

    Ray's state API (ray.util.state) needs the dashboard, which these nodes run without; the GCS actor
    table that it reads is also available to any driver, here.
    """
    table = ray_state.actors()
    return {int(info["Pid"]): info["Address"]["NodeID"] for info in table.values() if info.get("Pid")}
