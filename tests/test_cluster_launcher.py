"""`ray up` / `ray submit cluster.yaml run.py` / `ray down` with Ray's own cluster launcher, for real,
on this machine: an SSH server on 127.0.0.1 only, a user and a key made for the test, and a copy
of the shipped cluster.yaml that differs from it only in the addresses and the SSH user/key.

The launcher logs in as a user of its own (not root), so that its `ray stop` cannot touch any
other Ray on the machine, and its Ray keeps its files under RAY_TMPDIR (set in that user's
shell, as a cloud image would), apart from other users' /tmp/ray. Needs root (to install and
run sshd and to add the user) and Debian's packages; CI has both.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainers.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "cluster.yaml"
USER = "trainyard-ci"
RAY = str(Path(sys.executable).with_name("ray"))
# the fields a user fills in (cluster.yaml's step 1); everything else must be identical
ADDRESS_FIELDS = (("provider", "head_ip"), ("provider", "worker_ips"), ("auth", "ssh_user"),
                  ("auth", "ssh_private_key"))


def loopback_config(shipped: dict, user: str, key: Path) -> dict:
    config = yaml.safe_load(yaml.safe_dump(shipped))  # a deep copy
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"].update(ssh_user=user, ssh_private_key=str(key))
    return config


def without_address_fields(config: dict) -> dict:
    config = yaml.safe_load(yaml.safe_dump(config))
    for section, key in ADDRESS_FIELDS:
        config[section].pop(key, None)
    return config


def test_the_test_copy_differs_from_the_shipped_file_only_in_addresses_and_ssh(tmp_path):
    shipped = yaml.safe_load(SHIPPED.read_text())
    copy = loopback_config(shipped, USER, tmp_path / "key")
    assert without_address_fields(copy) == without_address_fields(shipped)
    assert copy != shipped
    # and the shipped file has every field the copy changes (nothing is added)
    for section, key in ADDRESS_FIELDS:
        assert key in shipped[section]


# ---------------------------------------------------------------- the real launcher
def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _install_if_missing(programs: dict[str, str]) -> None:
    missing = [package for program, package in programs.items() if not shutil.which(program)
               and not Path(program).exists()]
    if not missing:
        return
    if not shutil.which("apt-get"):
        pytest.skip(f"needs {', '.join(missing)} and there is no apt-get")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
        _run(["apt-get", "update", "-q"], 600, env=env)
        _run(install, 600, env=env)


def _make_user(home_dir_env: str) -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        _run(["useradd", "--create-home", "--shell", "/bin/bash", USER], 60)
        account = pwd.getpwnam(USER)
    # no password, but not locked: sshd (without PAM) refuses locked accounts even with a key
    _run(["usermod", "-p", "*", USER], 60)
    home = Path(account.pw_dir)
    # the user's shell environment (what an image would set): Ray's files apart from other users'
    for rc in (".bashrc", ".profile"):
        path = home / rc
        text = path.read_text() if path.exists() else ""
        if home_dir_env not in text:
            path.write_text(home_dir_env + "\n" + text)
        os.chown(path, account.pw_uid, account.pw_gid)
    return account


def _authorise(account: pwd.struct_passwd, public_key: str) -> None:
    ssh_dir = Path(account.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, account.pw_uid, account.pw_gid)
    (ssh_dir / "authorized_keys").chmod(0o600)


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


@pytest.fixture(scope="module")
def loopback_ssh(tmp_path_factory):
    """sshd on 127.0.0.1:22 only, for a key made here; yields (user, private key path)."""
    if os.geteuid() != 0:
        pytest.skip("the launcher test needs root: it installs and runs sshd and adds a user")
    _install_if_missing({"/usr/sbin/sshd": "openssh-server", "rsync": "rsync", "ssh": "openssh-client"})
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 22)) == 0:
            pytest.skip("port 22 is taken on 127.0.0.1 (Ray's launcher only speaks to port 22)")
    folder = tmp_path_factory.mktemp("sshd")
    folder.chmod(0o755)
    key = folder / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], 60)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")], 60)
    account = _make_user(f"export RAY_TMPDIR=/tmp/{USER}")
    _authorise(account, (folder / "id_ed25519.pub").read_text())
    config = folder / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", "Port 22", f"HostKey {folder / 'host_key'}",
        f"PidFile {folder / 'sshd.pid'}", f"AllowUsers {USER}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no",
        "AuthorizedKeysFile .ssh/authorized_keys", "X11Forwarding no", "PermitRootLogin no", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(folder / "sshd.log")])
    try:
        _wait_for_port(22, 20)
        yield account, key
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


@pytest.mark.long
@pytest.mark.ray
def test_ray_up_submit_down_on_loopback(loopback_ssh, tmp_path):
    account, key = loopback_ssh
    config = loopback_config(yaml.safe_load(SHIPPED.read_text()), account.pw_name, key)
    config_file = tmp_path / "cluster-loopback.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    storage = Path(account.pw_dir) / "ci-results"
    shutil.rmtree(storage, ignore_errors=True)
    launcher = [RAY]
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    try:
        # `ray up` rsyncs the project ("." in file_mounts) from here, installs it, starts Ray
        _run([*launcher, "up", "-y", "--no-config-cache", str(config_file)], 1500, cwd=ROOT, env=env)
        small = ["--set", "n_users=150", "--set", "n_songs=600", "--set", "n_artists=60", "--set", "n_days=20"]
        _run([*launcher, "submit", str(config_file), "run.py", "--", "--algorithm", "gat-simple",
              "--storage", str(storage), "--name", "gat", "--set", "max_iterations=2", *small], 600,
             cwd=ROOT, env=env)
        _run([*launcher, "submit", str(config_file), "run.py", "--", "--algorithm", "mopie",
              "--storage", str(storage), "--name", "mopie", "--set", "max_iterations=2"], 600, cwd=ROOT, env=env)
    finally:
        down = subprocess.run([*launcher, "down", "-y", str(config_file)], capture_output=True, text=True,
                              timeout=300, cwd=ROOT, env=env)
    assert down.returncode == 0, down.stderr[-2000:]
    # the runs' results, on the head's disk
    for name, algorithm in (("gat", "gat-simple"), ("mopie", "mopie")):
        run_dir = storage / name
        checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
        assert checkpoints, f"no checkpoint in {run_dir}: {sorted(p.name for p in run_dir.glob('*'))}"
        payload = load_checkpoint(checkpoints[-1], algorithm)
        assert payload["iteration"] == 2
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (storage / "mopie" / "figures" / "reconstruction.png").stat().st_size > 1000


# ---------------------------------------------------------------- the shipped file's promises
def _shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def test_every_start_command_fixes_the_documented_ports_and_turns_tokens_on():
    config = _shipped()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    common = ["--object-manager-port=8076", "--node-manager-port=8077", "--min-worker-port=10002",
              "--max-worker-port=19999", "--dashboard-agent-listen-port=52365", "--dashboard-agent-grpc-port=52366",
              "--runtime-env-agent-port=52367", "--metrics-export-port=8090"]
    for flag in common + ["--port=6379", "--dashboard-host=127.0.0.1", "--dashboard-port=8265",
                          "--ray-client-server-port=10001"]:
        assert flag in head, flag
    for flag in common + ["--address=$RAY_HEAD_IP:6379"]:
        assert flag in worker, flag
    comment = SHIPPED.read_text().split("cluster_name:")[0]
    for port in ("6379", "8076", "8077", "10001", "10002-19999", "52365", "8265"):
        assert port in comment, f"port {port} is not in the file's network comment"
    # token authentication: required on every node (a node without the token fails to start)
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "~/.ray/auth_token" in config["cluster_synced_files"]  # the head's token, copied to workers
    made = [c for c in config["head_setup_commands"] if "get-auth-token" in c]
    assert made and "> /dev/null" in made[0], "the token is made on the head and never printed"
    # v1 autoscaler (v2's local provider stops after one worker), set where the head's monitor starts
    assert "RAY_enable_autoscaler_v2=0" in head
    # the watch that stops a worker's Ray after `ray down`
    assert "ray stop --force" in worker and "health-check" in worker


def test_a_worker_listed_twice_is_refused(tmp_path, capsys):
    from distributed.cluster_file import ClusterFileError, check_machine_list, main

    check_machine_list(_shipped())  # the shipped file itself is fine
    twice = loopback_config(_shipped(), USER, tmp_path / "key")
    twice["provider"].update(head_ip="10.1.0.10", worker_ips=["10.1.0.11", "10.1.0.12", "10.1.0.11"])
    with pytest.raises(ClusterFileError, match=r"10\.1\.0\.11 more than once"):
        check_machine_list(twice)
    head_too = yaml.safe_load(yaml.safe_dump(twice))
    head_too["provider"]["worker_ips"] = ["10.1.0.11", "10.1.0.10"]
    with pytest.raises(ClusterFileError, match=r"the head 10\.1\.0\.10"):
        check_machine_list(head_too)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(twice))
    assert main([str(path)]) == 2
    assert "provider.worker_ips lists 10.1.0.11 more than once" in capsys.readouterr().err
    # and `ray up` runs the check on the head, against the file it was given
    assert any("distributed.cluster_file ~/ray_bootstrap_config.yaml" in c for c in _shipped()["head_setup_commands"])


def test_a_config_file_missing_on_a_node_is_named_with_that_node(tmp_path):
    """The driver checks files on its own disk; each node checks them again where they are
    read, and the error names the node (here: this machine, playing a worker node)."""
    import socket

    from distributed.worker import check_files_on_this_node
    from trainers.config import ConfigError
    from trainers.registry import get_algorithm

    config = get_algorithm("gat-simple").config_class(events=str(tmp_path / "missing.parquet"))
    with pytest.raises(ConfigError, match=rf"on node {socket.gethostname()} \(.+\): events = .*does not exist"):
        check_files_on_this_node(config)
