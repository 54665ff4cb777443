"""The shipped cluster.yaml on three hosts (network namespaces, see hosts.py): `ray up` brings
up every node with token authentication and only the documented ports, work spreads over the
hosts, a lost worker host (killed, or cut off) is survived with an exact resume, and `ray down`
leaves nothing running. Run with `python -m pytest -q -m cluster tests/cluster` (root)."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.cluster import hosts as hostlib
from tests.cluster.conftest import SHIPPED, cluster_copy, without_address_fields
from tests.test_faults import assert_resumed

pytestmark = pytest.mark.cluster

STORAGE = hostlib.SHARED
SMALL = {"n_users": 150, "n_songs": 600, "n_artists": 60, "n_days": 20, "data_dir": f"{STORAGE}/data"}
# 44217/44227: the autoscaler's and the dashboard's Prometheus metrics, fixed by Ray on the head
RAY_PORTS = {6379, 8076, 8077, 10001, 8265, 52365, 52366, 52367, 8090, 44217, 44227}


def sets(values: dict) -> str:
    return " ".join(f"--set {key}={value}" for key, value in values.items())


def ranks_by_ip(output: str) -> list[str]:
    """The node of each Train worker, from Ray Train's 'Started training worker group' lines
    (Ray's own output: run.py prints it with --verbose)."""
    return re.findall(r"- \(ip=([\d.]+), pid=\d+\) world_rank=", output)


def actor_logs(host, actor_class: str) -> set[str]:
    """The worker log files on `host` of actors of `actor_class` (Ray heads each with its name)."""
    found = set()
    for path in (path for folder in host.ray_logs() for path in folder.glob("worker-*.out")):
        try:
            if f":actor_name:{actor_class}" in path.read_text(errors="replace")[:4000]:
                found.add(path.name)
        except OSError:
            pass
    return found


def history(run_dir: Path, algorithm: str) -> tuple[dict, list[int]]:
    from trainers.checkpoint import load_checkpoint

    checkpoints = sorted((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    assert checkpoints, f"no checkpoint in {run_dir}"
    payload = load_checkpoint(checkpoints[-1], algorithm)
    return payload, [int(row["iteration"]) for row in payload["trainer"]["history"]]


def test_the_cluster_copy_differs_from_the_shipped_file_only_in_addresses_and_auth(tmp_path):
    shipped = yaml.safe_load(SHIPPED.read_text())
    copy = cluster_copy(shipped, "10.77.0.10", ["10.77.0.11", "10.77.0.12"], hostlib.USER, tmp_path / "key")
    assert without_address_fields(copy) == without_address_fields(shipped)
    for section, key in (("provider", "head_ip"), ("provider", "worker_ips"), ("auth", "ssh_user"),
                         ("auth", "ssh_private_key")):
        assert copy[section][key] != shipped[section][key]


def test_ray_up_brings_every_node_with_one_cpu_each(cluster):
    assert without_address_fields(yaml.safe_load(cluster.config_file.read_text())) == \
        without_address_fields(yaml.safe_load(SHIPPED.read_text()))
    nodes = cluster.alive_nodes()
    assert sorted(node["ip"] for node in nodes) == [host.ip for host in cluster.hosts]
    assert all(node["cpus"] == 1 for node in nodes), nodes
    print(f"cluster timings: {cluster.timings}")


def test_token_authentication_is_on_and_a_client_without_the_token_is_refused(cluster):
    for host in cluster.hosts:
        token = host.folder / "home" / ".ray" / "auth_token"
        assert token.stat().st_size > 16 and token.stat().st_mode & 0o077 == 0, host.name
    tokens = {(host.folder / "home" / ".ray" / "auth_token").read_text() for host in cluster.hosts}
    assert len(tokens) == 1, "every node must hold the same cluster token"
    secret = tokens.pop().strip()
    logs = [path for host in cluster.hosts for folder in host.ray_logs() for path in folder.glob("*")
            if path.is_file() and path.stat().st_size < 5e7]
    assert len(logs) > 20, f"Ray's logs of the hosts not found: {logs}"
    text = "".join(path.read_text(errors="replace") for path in logs)
    assert "Token authentication is disabled" not in text
    assert secret not in text, "the token must not appear in Ray's logs"
    assert secret not in cluster.log.read_text(), "the token must not appear in the launcher's output"
    # a client on the laptop side, no token: refused by the head's GCS
    probe = ("import ray\ntry:\n    ray.init(address='%s:6379', logging_level='ERROR')\n    print('JOINED')\n"
             "except Exception as error:\n    print('REFUSED', type(error).__name__, str(error)[:300])\n"
             % cluster.head.ip)
    home = cluster.log.parent / "no-token-home"
    home.mkdir(exist_ok=True)
    import sys
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "RAY_AUTH_MODE": "token"})
    assert "JOINED" not in result.stdout
    assert "REFUSED" in result.stdout or result.returncode != 0, result.stdout + result.stderr
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert "JOINED" not in result.stdout, result.stdout + result.stderr
    assert "REFUSED" in result.stdout, result.stdout + result.stderr


def test_nodes_listen_only_on_the_documented_ports(cluster):
    for host in cluster.hosts:
        outside = {port for address, port in host.listening_ports() if not address.startswith("127.")}
        unexpected = {port for port in outside if port not in RAY_PORTS | {22} and not 10002 <= port <= 19999}
        assert not unexpected, f"{host.name} listens on undocumented ports {sorted(unexpected)}"
        assert {6379, 8076, 8077} & outside if host is cluster.head else {8076, 8077} <= outside
    dashboard = {address for address, port in cluster.head.listening_ports() if port == 8265}
    assert dashboard == {"127.0.0.1"}, dashboard


def test_run_with_two_workers_puts_its_ranks_on_two_hosts(cluster):
    result = cluster.launcher("submit", str(cluster.config_file), "run.py", "--", "--algorithm", "gat-simple",
                              "--workers", "2", "--storage", str(STORAGE), "--name", "ddp", "--verbose",
                              *sets({**SMALL, "max_iterations": 2}).split(), timeout=900)
    ips = ranks_by_ip(result.stdout + result.stderr)
    assert len(ips) >= 2 and len(set(ips)) == 2, ips
    payload, iterations = history(STORAGE / "ddp", "gat-simple")
    assert iterations == [1, 2]
    assert list((STORAGE / "ddp" / "tensorboard").glob("events.out.tfevents.*"))


def test_selfplay_actors_run_on_more_than_one_host(cluster):
    before = {host.name: actor_logs(host, "SelfPlayActor") for host in cluster.hosts}
    # two 1-CPU actors on three 1-CPU hosts, the learner (a fraction of a CPU) on the head: the
    # actors cannot share a host; no evaluation actors, whose CPUs the cluster does not have
    cluster.ssh(cluster.head, f"cd ~/trainyard && python run.py --algorithm ppo-shogi --actors 2 "
                              f"--storage {STORAGE} --name shogi --set max_iterations=2 --set eval_actors=0",
                timeout=900)
    used = [host.name for host in cluster.hosts if actor_logs(host, "SelfPlayActor") - before[host.name]]
    assert len(used) >= 2, f"self-play actors ran on {used}"
    assert history(STORAGE / "shogi", "ppo-shogi")[1] == [1, 2]


def test_a_tune_search_runs_trials_on_more_than_one_host(cluster):
    cluster.ssh(cluster.head, f"cd ~/trainyard && python tune.py --algorithm mopie --num-samples 2 "
                              f"--storage {STORAGE}/tune --name search --set max_iterations=2", timeout=1200)
    nodes = set()
    for result in (STORAGE / "tune" / "search").glob("*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                nodes.add(json.loads(line)["node_ip"])
    assert len(nodes) >= 2, f"trials ran on {nodes}"


def test_ray_job_submit_through_the_dashboard_tunnel_with_the_cluster_token(cluster, tmp_path):
    import socket
    import sys

    from tests.cluster.conftest import RAY, ROOT, launcher_env

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tunnel = subprocess.Popen([RAY, "dashboard", "-p", str(port), str(cluster.config_file)], cwd=ROOT,
                              env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        token = tmp_path / "cluster-token"
        cluster.launcher("rsync-down", str(cluster.config_file), "~/.ray/auth_token", str(token), timeout=120)
        token.chmod(0o600)
        address = f"http://127.0.0.1:{port}"
        refused = subprocess.run([RAY, "job", "list", "--address", address], capture_output=True, text=True,
                                 timeout=120, env={**launcher_env(), "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"})
        assert refused.returncode != 0, "the job API answered a client without the token"
        env = {**launcher_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        job = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".", "--", "python",
                              "run.py", "--algorithm", "gat-simple", "--storage", str(STORAGE), "--name", "job",
                              *sets({**SMALL, "max_iterations": 1}).split()],
                             capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
        with cluster.log.open("a") as log:
            log.write(f"\n$ ray job submit ...\n{job.stdout[-20000:]}\n{job.stderr[-20000:]}\n")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert history(STORAGE / "job", "gat-simple")[1] == [1]
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=30)


def run_in_background(cluster, name: str, iterations: int):
    command = (f"cd ~/trainyard && python run.py --algorithm gat-simple --workers 2 --storage {STORAGE} "
               f"--name {name} --max-failures 3 --verbose {sets({**SMALL, 'max_iterations': iterations})}")
    return subprocess.Popen(cluster.ssh_command(cluster.head, command), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(run_dir: Path, iteration: int, process, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for snapshot in run_dir.glob("checkpoint_*/state.pt"):
            try:
                if torch.load(snapshot, weights_only=True)["iteration"] >= iteration:
                    return
            except Exception:  # noqa: BLE001 - being written
                pass
        if process.poll() is not None:
            raise AssertionError(f"the run ended early:\n{process.stdout.read()[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"no checkpoint of iteration {iteration} in {run_dir} after {seconds} s")


ITERATIONS = 5


@pytest.fixture(scope="module")
def undisturbed(cluster):
    process = run_in_background(cluster, "calm", ITERATIONS)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    return history(STORAGE / "calm", "gat-simple")


def worker_host_of_rank(cluster, output_so_far: str):
    ips = ranks_by_ip(output_so_far)
    workers = [host for host in cluster.hosts[1:] if host.ip in ips]
    assert workers, f"no rank on a worker host: {ips}"
    return workers[0]


def disturbed_run(cluster, name: str, disturb) -> tuple[dict, list[int], str, float]:
    process = run_in_background(cluster, name, ITERATIONS)
    lines: list[str] = []
    import threading
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    undo = None
    try:
        wait_for_checkpoint(STORAGE / name, 2, process, 600)
        host = worker_host_of_rank(cluster, "".join(lines))
        began = time.monotonic()
        undo = disturb(host)
        process.wait(timeout=900)
    finally:
        if undo:
            undo()
        if process.poll() is None:  # a failed step: the run's ssh client goes with it
            process.kill()
            process.wait(timeout=30)
    reader.join(timeout=10)
    output = "".join(lines)
    assert process.returncode == 0, output[-4000:]
    payload, iterations = history(STORAGE / name, "gat-simple")
    return payload, iterations, output, time.monotonic() - began


def assert_same_result(disturbed: dict, calm: dict) -> None:
    final, reference = disturbed["trainer"]["history"][-1], calm["trainer"]["history"][-1]
    for key, value in reference.items():
        if isinstance(value, float) and "second" not in key and "time" not in key:  # wall clock differs
            assert final[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_a_killed_worker_host_is_survived_with_an_exact_resume(cluster, undisturbed):
    killed = []
    payload, iterations, output, seconds = disturbed_run(
        cluster, "killed", lambda host: killed.extend(host.kill_ray()) and None)
    assert killed, "no Ray process found to kill on the worker host"
    assert iterations == list(range(1, ITERATIONS + 1))
    assert_resumed(STORAGE / "killed", ITERATIONS)  # a second worker group, from the last checkpoint
    assert_same_result(payload, undisturbed[0])
    print(f"killed worker host: run finished {seconds:.0f} s after the kill")
    cluster.wait_for_nodes(len(cluster.hosts), 300)  # the launcher restarts Ray there


def test_a_cut_off_worker_host_is_survived_with_an_exact_resume(cluster, undisturbed):
    def cut(host):
        host.cut()
        return host.reconnect

    payload, iterations, output, seconds = disturbed_run(cluster, "cut", cut)
    assert iterations == list(range(1, ITERATIONS + 1))
    assert_resumed(STORAGE / "cut", ITERATIONS)
    assert_same_result(payload, undisturbed[0])
    print(f"cut-off worker host: run finished {seconds:.0f} s after the cut")


def test_ray_down_leaves_no_ray_process_on_any_host(cluster):
    cluster.launcher("down", "-y", str(cluster.config_file), timeout=300)
    deadline = time.monotonic() + 90
    left = {host.name: host.ray_processes() for host in cluster.hosts}
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(3)
        left = {host.name: host.ray_processes() for host in cluster.hosts}
    assert not any(left.values()), f"Ray processes left after ray down: {left}"
