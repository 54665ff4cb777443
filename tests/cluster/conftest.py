"""The three-host cluster the multi-node suite runs on (see hosts.py), brought up once per
session with the shipped cluster.yaml through `ray up`, and torn down whatever happens."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.cluster import hosts as hostlib
from tests.cluster import wheels

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "cluster.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
WHEELS = Path(os.environ.get("TRAINYARD_CLUSTER_WHEELS", "/var/tmp/trainyard-cluster-wheels"))
# the fields a user fills in (cluster.yaml's step 1); everything else must be identical
ADDRESS_FIELDS = (("provider", "head_ip"), ("provider", "worker_ips"), ("auth", "ssh_user"),
                  ("auth", "ssh_private_key"))


def cluster_copy(shipped: dict, head: str, workers: list[str], user: str, key: Path) -> dict:
    config = yaml.safe_load(yaml.safe_dump(shipped))  # a deep copy
    config["provider"].update(head_ip=head, worker_ips=workers)
    config["auth"].update(ssh_user=user, ssh_private_key=str(key))
    return config


def without_address_fields(config: dict) -> dict:
    config = yaml.safe_load(yaml.safe_dump(config))
    for section, key in ADDRESS_FIELDS:
        config[section].pop(key, None)
    return config


def launcher_env() -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("RAY_", "TRAINYARD_")) and key not in ("PYTHONPATH", "TMPDIR")}
    env["TMPDIR"] = str(hostlib.LAPTOP_TMP)
    return env


@dataclass
class Cluster:
    hosts: list
    key: Path
    config_file: Path
    log: Path
    timings: dict = field(default_factory=dict)

    @property
    def head(self):
        return self.hosts[0]

    def ssh(self, host, command: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        """`command` in a login shell of USER on `host` (the shell `ray submit` uses)."""
        result = subprocess.run(self.ssh_command(host, command), capture_output=True, text=True, timeout=timeout)
        with self.log.open("a") as log:
            log.write(f"\n$ [{host.name}] {command}\n{result.stdout[-20000:]}\n{result.stderr[-20000:]}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"[{host.name}] {command} exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def ssh_command(self, host, command: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"{hostlib.USER}@{host.ip}",
                "bash -lc " + shlex.quote(command)]

    def launcher(self, *args: str, timeout: float = 1500, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                env=launcher_env())
        with self.log.open("a") as log:
            log.write(f"\n$ ray {' '.join(args)}\n{result.stdout[-50000:]}\n{result.stderr[-50000:]}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"ray {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def alive_nodes(self) -> list[dict]:
        script = ("import json, ray; ray.init(logging_level='ERROR'); "
                  "print('NODES', json.dumps([{'ip': n['NodeManagerAddress'], 'cpus': n['Resources'].get('CPU', 0)} "
                  "for n in ray.nodes() if n['Alive']]))")
        result = self.ssh(self.head, f"python -c {shlex.quote(script)}", timeout=120, check=False)
        for line in result.stdout.splitlines():
            if line.startswith("NODES "):
                return json.loads(line[len("NODES "):])
        return []

    def wait_for_nodes(self, count: int, seconds: float) -> list[dict]:
        deadline = time.monotonic() + seconds
        nodes = []
        while time.monotonic() < deadline:
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                return nodes
            time.sleep(10)
        raise AssertionError(f"{len(nodes)} of {count} nodes alive after {seconds:.0f} s: {nodes}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, pytestconfig):
    marks = pytestconfig.getoption("markexpr") or ""
    if "cluster" not in marks or "not cluster" in marks:
        # a `-m` of its own (e.g. -m "not ray") replaces the default "not cluster": building
        # three hosts takes many minutes, so only an explicit -m cluster does it
        pytest.skip("the multi-node suite runs with -m cluster")
    if os.geteuid() != 0:
        pytest.skip("the cluster suite needs root (network namespaces, sshd, a user)")
    from tests.test_cluster_launcher import _install_if_missing

    _install_if_missing({"/usr/sbin/sshd": "openssh-server", "ssh": "openssh-client", "rsync": "rsync",
                         "nft": "nftables", "ip": "iproute2", "unshare": "util-linux"})
    folder = tmp_path_factory.mktemp("cluster")
    log = Path(os.environ.get("TRAINYARD_CLUSTER_LOG", folder / "cluster.log"))
    started = time.monotonic()
    wheel_folder = wheels.build(WHEELS)
    timings = {"wheels_s": time.monotonic() - started}
    hosts = []
    try:
        hosts, key = hostlib.up(wheel_folder)
        config = cluster_copy(yaml.safe_load(SHIPPED.read_text()), hosts[0].ip, [h.ip for h in hosts[1:]],
                              hostlib.USER, key)
        config_file = folder / "cluster-namespaces.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        cluster = Cluster(hosts, key, config_file, log, timings)
        begun = time.monotonic()
        up = cluster.launcher("up", "-y", "--no-config-cache", str(config_file), timeout=1500, check=False)
        if up.returncode != 0 and "timed out during startup" in up.stdout + up.stderr:
            # `ray start` gives a node 30 s (fixed in Ray) to register; a loaded machine can miss it
            cluster.launcher("up", "-y", "--no-config-cache", str(config_file), timeout=1500)
        elif up.returncode != 0:
            raise AssertionError(f"ray up exited {up.returncode}:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}")
        timings["ray_up_s"] = time.monotonic() - begun
        cluster.wait_for_nodes(len(hosts), 600)
        timings["all_nodes_s"] = time.monotonic() - begun
        print(f"\ncluster up: {timings}", flush=True)
        yield cluster
    finally:
        if hosts:
            try:
                subprocess.run([RAY, "down", "-y", str(folder / "cluster-namespaces.yaml")], capture_output=True,
                               timeout=300, cwd=ROOT, env=launcher_env())
            except Exception:  # noqa: BLE001 - the hosts go below whatever happened here
                pass
        # the hosts' files stay for a look at their Ray logs; the next run, or
        # `python -m tests.cluster.hosts down`, removes them
        hostlib.down(remove_files=False)
