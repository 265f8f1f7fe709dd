"""Turn what ``ssh`` printed on stderr into one line that says what is wrong and what to do.

OpenSSH reports every failure of ``ssh -W`` on stderr and exits 255; the messages are stable across
versions (they are what users search for). :func:`diagnose` recognises the common ones; anything else is
passed on as ssh's last line.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from exo_core.transport.ssh.route import SshRoute


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def diagnose(
    stderr: Sequence[str], returncode: int | None, route: SshRoute, host: str, port: int
) -> str | None:
    """A one-line diagnosis of an ssh child that failed, or ``None`` when there is nothing to say.

    Args:
        stderr: ssh's stderr lines (the last ones are enough).
        returncode: its exit status (negative: killed by that signal; ``None``: still running).
        route: the SSH hop.
        host / port: the node's address as the SSH server sees it.
    """
    text = "\n".join(stderr)
    low = text.lower()
    server = route.ssh_target
    node = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if "remote host identification has changed" in low:
        return (
            f"the host key of {server} changed since it was recorded in known_hosts (a reinstalled server, "
            f"or someone in between): check it, then `ssh-keygen -R {route.ssh_host}`"
        )
    if "host key verification failed" in low or "no matching host key" in low:
        return (
            f"host key verification failed for {server}: its key is not the one in known_hosts (or it is "
            f"not there yet); connect once with `ssh {route.command_line()}` to check and record it"
        )
    if "permission denied" in low:
        methods = _after(text, "Permission denied")
        return (
            f"{server} refused our SSH key (permission denied{methods}): exo runs ssh with BatchMode=yes "
            "(no password prompts), so put your public key in its ~/.ssh/authorized_keys or name the key "
            "with IdentityFile in ~/.ssh/config"
        )
    if "could not resolve hostname" in low or "name or service not known" in low:
        return (
            f"cannot resolve {route.ssh_host}: no such host name (a typo, or a Host alias missing from "
            "~/.ssh/config)"
        )
    if "administratively prohibited" in low:
        return (
            f"the SSH server at {server} forbids forwarding to {node} (AllowTcpForwarding / PermitOpen in "
            "its sshd_config)"
        )
    if "open failed" in low or "stdio forwarding failed" in low:
        return (
            f"{server} could not connect to {node} on its side: the remote port is closed: is exo running "
            f"there, and on which port (--node-port)?"
        )
    if "connection refused" in low:
        return (
            f"nothing accepts SSH connections at {server} (connection refused): is sshd running there, on "
            "this port?"
        )
    if "timeout, server" in low and "not responding" in low:
        return f"the SSH server at {server} stopped answering keepalives: the link was lost"
    if "timed out" in low:
        return f"connecting to the SSH server at {server} timed out: host down, or the port is filtered"
    if "no route to host" in low or "network is unreachable" in low:
        return f"cannot reach the SSH server at {server}: no route to host"
    if "connection closed by" in low or "connection reset by" in low:
        return f"the SSH server at {server} closed the connection: {_last(stderr)}"
    if returncode is not None and returncode < 0:
        return f"ssh to {server} was stopped by {_signal_name(-returncode)}"
    last = _last(stderr)
    if last:
        return f"ssh to {server} failed: {last}"
    if returncode:
        return f"ssh to {server} exited with status {returncode}"
    return None


def _after(text: str, marker: str) -> str:
    start = text.find(marker)
    line = text[start + len(marker) :].splitlines()[0].strip() if start >= 0 else ""
    return f" {line.rstrip('.')}" if line.startswith("(") else ""


def _last(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        if line.strip():
            return line.strip().rstrip(".")
    return ""
