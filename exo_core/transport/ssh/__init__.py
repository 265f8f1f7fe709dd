"""SSH links: reaching a node through ``ssh -W`` (no ``-L`` tunnel, no open port on the remote).

:mod:`.route` parses ``ssh://`` addresses, :mod:`.link` runs the ``ssh`` child whose stdio carries the
frames, :mod:`.diagnose` turns ssh's stderr into a one-line diagnosis. docs/ssh-tunnels.md shows the use.
"""

from __future__ import annotations

from exo_core.transport.ssh.link import SshLinkError, SshProcess, ssh_argv
from exo_core.transport.ssh.route import SshRoute, is_ssh_url, parse_ssh_url

__all__ = ["SshLinkError", "SshProcess", "SshRoute", "is_ssh_url", "parse_ssh_url", "ssh_argv"]
