"""Three "machines" on one Linux box, for the multi-node suite: each one a network namespace
(own address in 10.77.0.0/24, no default route, IPv6 off, a firewall), plus mount, UTS and PID
namespaces with its own home, /tmp, /etc/hosts, /dev/shm and hostname, one CPU (a cpuset
cgroup) and an sshd on its own address (key only). The launching side (the "laptop") is this
namespace, on a bridge at 10.77.0.1. One Unix user, the same uid on every host, like a cloud
image; every host sees the shared folder (the NFS stand-in) at the same path.

Needs root and Debian's openssh-server, rsync, nftables, iproute2. `python -m tests.cluster.hosts
down` removes everything this module makes (idempotent), whatever state a failed run left: the
hosts and every process in them, the network, the cgroups, the user, the launcher's state.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.77.0"
BRIDGE = "tybr0"
LAPTOP_IP = f"{SUBNET}.1"
USER = "tyuser"
UID = 47815
BASE = Path("/srv/trainyard-cluster")
SHARED = Path("/mnt/shared/trainyard")  # TRAINYARD_STORAGE in cluster.yaml
CPUSET = Path("/sys/fs/cgroup/cpuset")
# the launching side's temporary folder (TMPDIR of every `ray` command the suite runs): Ray's
# local provider keeps the cluster's node list in <tmp>/ray/cluster-<cluster_name>.state, which
# another `ray up` on this machine of a file with the same cluster_name (the default suite's
# launcher test) would otherwise overwrite mid-run; made afresh by up()
LAPTOP_TMP = BASE / "laptop-tmp"
# Ray's fixed ports (cluster.yaml's start commands) and SSH; DDP's rendezvous and gloo pairs
# listen on the kernel's ephemeral range
ALLOWED_TCP = "22, 6379, 8076, 8077, 10001, 10002-19999, 52365, 52366, 32768-60999"


def sh(command: list[str] | str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, shell=isinstance(command, str), capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{command} exited {result.returncode}: {result.stdout[-2000:]} {result.stderr[-2000:]}")
    return result


@dataclass
class Host:
    index: int
    name: str
    ip: str
    veth: str  # the laptop-side end, in the bridge
    folder: Path
    init_pid: int = 0  # the host's first process (seen from here); killing it ends the host

    def pid_namespace(self) -> str:
        return os.readlink(f"/proc/{self.init_pid}/ns/pid")

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process of this host except its sshd and the init."""
        found = []
        try:
            namespace = self.pid_namespace()
        except OSError:
            return found
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.init_pid:
                continue
            try:
                if os.readlink(entry / "ns/pid") != namespace:
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if command and "sshd" not in command:
                found.append((int(entry.name), command))
        return found

    def ray_processes(self) -> list[tuple[int, str]]:
        return [(pid, command) for pid, command in self.processes()
                if "ray" in command or "gcs_server" in command or "raylet" in command]

    def ray_logs(self) -> list[Path]:
        """This host's Ray log folders (the newest session's, with the logs of ended workers in
        old/), seen from here: session_latest is a link to an absolute path inside the host."""
        latest = self.folder / "tmp" / "ray" / "session_latest"
        try:
            session = self.folder / "tmp" / Path(os.readlink(latest)).relative_to("/tmp")
        except (OSError, ValueError):
            return []
        return [session / "logs", session / "logs" / "old"]

    def kill_ray(self) -> list[int]:
        """SIGKILL every Ray process of this host, by pid (a machine whose Ray crashed)."""
        pids = [pid for pid, _ in self.ray_processes()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def cut(self) -> None:
        sh(["ip", "link", "set", self.veth, "down"])

    def reconnect(self) -> None:
        sh(["ip", "link", "set", self.veth, "up"])

    def listening_ports(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP socket listening in this host's network namespace."""
        out = sh(["ip", "netns", "exec", self.name, "ss", "-Hltn"]).stdout
        ports = set()
        for line in out.splitlines():
            local = line.split()[3]
            address, _, port = local.rpartition(":")
            ports.add((address.strip("[]"), int(port)))
        return ports


def host_list(count: int = 3) -> list[Host]:
    return [Host(i, f"tyh{i}", f"{SUBNET}.{10 + i}", f"tyv{i}", BASE / f"tyh{i}") for i in range(count)]


def make_user() -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        sh(["useradd", "--uid", str(UID), "--no-create-home", "--home-dir", f"/home/{USER}",
            "--shell", "/bin/bash", USER])
        account = pwd.getpwnam(USER)
    sh(["usermod", "-p", "*", USER])  # no password, not locked (sshd without PAM refuses locked)
    Path(account.pw_dir).mkdir(exist_ok=True)  # the mount point of each host's own home
    return account


def remove_user() -> None:
    """The hosts' user and its home's mount point (empty: each host mounts its own home there);
    every process of the user has ended with its host."""
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        return
    sh(["userdel", USER], check=False)
    try:
        Path(account.pw_dir).rmdir()
    except OSError:
        pass


def make_key(folder: Path) -> Path:
    key = folder / "id_ed25519"
    if not key.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    return key


def write_home(host: Host, account: pwd.struct_passwd, public_key: str, wheels: Path) -> None:
    home = host.folder / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "authorized_keys").write_text(public_key)
    # the hosts have no package index: pip reads the wheel folder only
    (home / ".config" / "pip").mkdir(parents=True, exist_ok=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        f"[global]\nno-index = true\nfind-links = {wheels}\ndisable-pip-version-check = true\n")
    for path in [home, *home.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    home.chmod(0o755)
    (home / ".ssh").chmod(0o700)
    (home / ".ssh" / "authorized_keys").chmod(0o600)


def start_host(host: Host, hosts: list[Host], account: pwd.struct_passwd, public_key: str, wheels: Path) -> None:
    folder = host.folder
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "tmp").chmod(0o1777)
    write_home(host, account, public_key, wheels)
    (folder / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.name}\n" for h in hosts)
                                  + f"{LAPTOP_IP} laptop\n")
    if not (folder / "host_key").exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")])
    (folder / "sshd_config").write_text("\n".join([
        f"ListenAddress {host.ip}", "Port 22", f"HostKey {folder / 'host_key'}", f"PidFile {folder / 'sshd.pid'}",
        f"AllowUsers {USER}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "UsePAM no", "AuthorizedKeysFile .ssh/authorized_keys",
        "X11Forwarding no", "PermitRootLogin no", "MaxStartups 50", "MaxSessions 50", ""]))
    # the network: a veth into the bridge, the host's address, no route out of the /24
    sh(["ip", "netns", "add", host.name])
    sh(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.name])
    sh(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
    inside = ["ip", "netns", "exec", host.name]
    sh(inside + ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
    sh(inside + ["ip", "addr", "add", f"{host.ip}/24", "dev", "eth0"])
    sh(inside + ["ip", "link", "set", "eth0", "up"])
    sh(inside + ["ip", "link", "set", "lo", "up"])
    (folder / "firewall.nft").write_text("\n".join([
        "table inet trainyard {", "  chain input {", "    type filter hook input priority 0; policy drop;",
        "    iif lo accept", "    ct state established,related accept",
        f"    ip saddr {SUBNET}.0/24 tcp dport {{ {ALLOWED_TCP} }} accept", "    icmp type echo-request accept",
        "  }", "}", ""]))
    sh(inside + ["nft", "-f", str(folder / "firewall.nft")])
    # one CPU
    cpuset = CPUSET / f"trainyard-{host.name}"
    cpuset.mkdir(exist_ok=True)
    (cpuset / "cpuset.cpus").write_text(str(host.index % os.cpu_count()))
    (cpuset / "cpuset.mems").write_text((CPUSET / "cpuset.mems").read_text().strip())
    boot = "; ".join([
        "set -e", f"hostname {host.name}",
        f"mount --bind {folder / 'home'} {account.pw_dir}", f"mount --bind {folder / 'tmp'} /tmp",
        f"mount --bind {folder / 'hosts'} /etc/hosts", "mount -t tmpfs -o size=8g tmpfs /dev/shm",
        # Ray counts the CPUs of the cpuset it sees there
        f"mount --bind {cpuset} {CPUSET}",
        f"exec /usr/sbin/sshd -D -f {folder / 'sshd_config'} -E {folder / 'sshd.log'}"])
    Path("/run/sshd").mkdir(exist_ok=True)
    # nsenter, not `ip netns exec`, which mounts a sysfs of its own (and hides the cgroups)
    launcher = subprocess.Popen(
        ["sh", "-c", f"echo $$ > {cpuset / 'tasks'}; exec nsenter --net=/run/netns/{host.name} "
                     f"unshare --mount --uts --pid --fork --mount-proc --propagation private sh -c \"$0\"", boot],
        stdin=subprocess.DEVNULL, stdout=open(folder / "boot.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    (folder / "launcher.pid").write_text(str(launcher.pid))
    # the host's first process is the child unshare forks (pid 1 inside)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        if children.exists() and children.read_text().split():
            host.init_pid = int(children.read_text().split()[0])
            if ssh_port_open(host):
                (folder / "init.pid").write_text(str(host.init_pid))
                return
        time.sleep(0.2)
    raise RuntimeError(f"host {host.name} did not come up: {(folder / 'boot.log').read_text()[-2000:]}")


def ssh_port_open(host: Host) -> bool:
    return sh(["ip", "netns", "exec", host.name, "ss", "-Hltn", f"sport = :22"], check=False).stdout.strip() != ""


def up(wheels: Path, count: int = 3) -> tuple[list[Host], Path]:
    """Makes the hosts; returns them and the private key that logs in as USER on each."""
    down(count)
    account = make_user()
    BASE.mkdir(parents=True, exist_ok=True)
    BASE.chmod(0o755)
    key = make_key(BASE)
    LAPTOP_TMP.mkdir()
    public_key = (BASE / "id_ed25519.pub").read_text()
    sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    sh(["ip", "addr", "add", f"{LAPTOP_IP}/24", "dev", BRIDGE])
    sh(["ip", "link", "set", BRIDGE, "up"])
    SHARED.mkdir(parents=True, exist_ok=True)
    os.chown(SHARED, account.pw_uid, account.pw_gid)
    hosts = host_list(count)
    for host in hosts:
        start_host(host, hosts, account, public_key, wheels)
    return hosts, key


def down(count: int = 3, remove_files: bool = True) -> None:
    """Ends every host (its init, so every process in it), removes the network and cgroups, and
    (unless told to keep them, for a look at Ray's logs after a failure) the hosts' files."""
    for host in host_list(count):
        for name in ("init.pid", "launcher.pid"):
            pid_file = host.folder / name
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
                pid_file.unlink()
        sh(["ip", "netns", "del", host.name], check=False)
        sh(["ip", "link", "del", host.veth], check=False)
        cpuset = CPUSET / f"trainyard-{host.name}"
        deadline = time.monotonic() + 20
        while cpuset.exists() and time.monotonic() < deadline:
            try:
                cpuset.rmdir()
            except OSError:
                time.sleep(0.5)  # its last processes are still exiting
        if remove_files:
            shutil.rmtree(host.folder / "tmp", ignore_errors=True)
            shutil.rmtree(host.folder / "home", ignore_errors=True)
    sh(["ip", "link", "del", BRIDGE], check=False)
    remove_user()
    if remove_files:
        shutil.rmtree(SHARED, ignore_errors=True)
    # the launcher's state from an earlier run must not reach the next `ray up`
    shutil.rmtree(LAPTOP_TMP, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["down"]:
        down()
    else:
        print("usage: python -m tests.cluster.hosts down", file=sys.stderr)
        sys.exit(2)
