"""A real OpenSSH server for tests and benchmarks: on 127.0.0.1 with `ssh -N -L` tunnels through it
(:func:`running_sshd`), or as `sshd -i` inside loopback-only network namespaces (:func:`ssh_world`).

The server runs as root with its own generated host key, config and authorized key, on a free loopback
port; nothing touches the system's sshd or ~/.ssh.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from exo_core.testing import find_free_ports


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Sshd:
    port: int
    client_key: Path
    known_hosts: Path
    workdir: Path

    def ssh_base(self) -> list[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=5",
            "-F",
            "/dev/null",
        ]

    @contextmanager
    def forward(
        self, local_port: int, remote_host: str, remote_port: int
    ) -> Iterator[subprocess.Popen[bytes]]:
        """``ssh -N -L local_port:remote_host:remote_port root@127.0.0.1`` until the block exits."""
        with (self.workdir / f"ssh-{local_port}.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    *self.ssh_base(),
                    "-N",
                    "-L",
                    f"127.0.0.1:{local_port}:{remote_host}:{remote_port}",
                    "root@127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            _wait_port(local_port, 20, proc)
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sshd_binary() -> str | None:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


@contextmanager
def running_sshd(workdir: Path) -> Iterator[Sshd]:
    """Start sshd on a free 127.0.0.1 port; stop it on exit."""
    binary = sshd_binary()
    if binary is None:
        raise RuntimeError("sshd is not installed: run `make test` (bootstrap installs openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    (port,) = find_free_ports(1)
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding yes",
                "StrictModes no",
                "UsePAM no",
                f"PidFile {workdir / 'sshd.pid'}",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir sshd insists on
    with (workdir / "sshd.log").open("ab") as log:
        proc = subprocess.Popen(
            [binary, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        _wait_port(port, 20, proc)
        yield Sshd(port, client_key, known_hosts, workdir)
    finally:
        _stop(proc)


@dataclass
class SshWorld:
    """Remote hosts that are network namespaces with only loopback, reachable by nothing but SSH.

    Each host's ``Host`` entry in :attr:`config` starts a fresh ``sshd -i`` inside its namespace as the
    ProxyCommand, so no sshd listens anywhere: ``ssh -F config <name>`` is the only way in. Besides each
    host ``<name>``, the config has ``<name>-stranger`` (a key the host does not authorize) and
    ``<name>-wrong-host-key`` (known_hosts holds another key for it).
    """

    workdir: Path
    config: Path
    hosts: dict[str, str]  # name -> network namespace

    @property
    def command(self) -> str:
        """The ``--ssh-command`` / ``EXO_SSH_COMMAND`` that uses this world's config."""
        return f"ssh -F {self.config}"


@contextmanager
def ssh_world(workdir: Path, names: list[str]) -> Iterator[SshWorld]:
    """Create one loopback-only namespace per name and the ssh config that reaches each (root only)."""
    binary = sshd_binary()
    if binary is None:
        raise RuntimeError("sshd is not installed: run `make test` (bootstrap installs openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    keys = {k: workdir / f"{k}_ed25519" for k in ("host", "other_host", "client", "stranger")}
    for key in keys.values():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
    authorized = workdir / "authorized_keys"
    authorized.write_text(keys["client"].with_suffix(".pub").read_text())
    sshd_config = workdir / "sshd_config"
    sshd_config.write_text(
        "\n".join(
            [
                f"HostKey {keys['host']}",
                f"AuthorizedKeysFile {authorized}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding yes",
                "StrictModes no",
                "UsePAM no",
                "PidFile none",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    host_pub = keys["host"].with_suffix(".pub").read_text().strip()
    other_pub = keys["other_host"].with_suffix(".pub").read_text().strip()
    tag = f"exossh{os.getpid() % 100000}"
    hosts = {name: f"{tag}-{i}" for i, name in enumerate(names)}
    known: list[str] = []
    blocks: list[str] = []
    for name, ns in hosts.items():
        known += [f"{name} {host_pub}", f"{name}-stranger {host_pub}", f"{name}-wrong-host-key {other_pub}"]
        proxy = f"ProxyCommand ip netns exec {ns} {binary} -i -e -f {sshd_config}"
        for alias, key_name in (
            (name, "client"),
            (f"{name}-stranger", "stranger"),
            (f"{name}-wrong-host-key", "client"),
        ):
            blocks.append(
                f"Host {alias}\n  User root\n  {proxy}\n  IdentityFile {keys[key_name]}\n"
                "  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {workdir / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                f"  HostKeyAlias {alias}\n  LogLevel ERROR\n"
            )
    (workdir / "known_hosts").write_text("\n".join(known) + "\n")
    config = workdir / "ssh_config"
    config.write_text("\n".join(blocks))
    made: list[str] = []
    try:
        for ns in hosts.values():
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=10)
            made.append(ns)
            subprocess.run(
                ["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10
            )
        yield SshWorld(workdir, config, hosts)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
