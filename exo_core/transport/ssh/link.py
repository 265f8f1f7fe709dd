"""An SSH link: exo frames over the stdin/stdout of an ``ssh -W host:port destination`` child.

The child's stdin and stdout are one end of a Unix socket pair; the transport speaks frames over the
other end exactly as over a TCP socket (same :class:`~exo_core.transport.connection.Connection`, same
handshake and authentication), so nothing above the socket knows the difference. The remote node needs no
open port: its SSH server connects to it on its own side (127.0.0.1 by default).

The child lives exactly as long as the connection: :meth:`SshProcess.serve` runs the connection and, when
it ends for any reason (closed, peer forgotten, node stopping), terminates the child and reaps it, so no
zombie or orphan ``ssh`` outlives it. The child runs in its own session: a Ctrl-C in the terminal reaches
exo alone, which drains its requests over the links before closing them. When the child dies first (the
network went away, the server stopped answering keepalives, someone killed it), the connection is failed
with ssh's own diagnosis and the transport redials with its usual backoff.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import Process

from exo_core.errors import ExoError
from exo_core.transport.ssh.diagnose import diagnose
from exo_core.transport.ssh.route import SshRoute

log = logging.getLogger("exo_core.transport")

#: Options exo always passes, after the user's own (ssh keeps the first value it gets for an option, so
#: ``--ssh-command "ssh -o ServerAliveInterval=30"`` wins over exo's 5).
_OPTIONS = (
    "BatchMode=yes",  # never prompt: there is no terminal to answer on
    "ExitOnForwardFailure=yes",  # a closed remote port ends the child at once, with a message
    "ServerAliveInterval=5",  # notice a dead network within ~15 s even when no frame is moving
    "ServerAliveCountMax=3",
)
#: stderr lines kept for the diagnosis
_STDERR_LINES = 20
#: seconds the child gets to exit by itself once its stdin closed, then on SIGTERM before SIGKILL
_EOF_GRACE = 0.5
_TERM_GRACE = 2.0


#: Socket-pair buffer size asked for (the kernel caps it at net.core.wmem_max / rmem_max). A Unix socket's
#: default (~208 KB) made a 64 MiB tensor take 2x the sendmsg calls and ~1.5x exo's CPU of a loopback TCP
#: socket, which grows to 4 MiB by itself (measured with benchmarks/ssh_link.py).
_PAIR_BUFFER = 4 << 20


def _widen(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _PAIR_BUFFER)
        except OSError:  # not allowed here: the default still works
            pass


class SshLinkError(ExoError, OSError):
    """The ssh child could not make the link; the message is its one-line diagnosis."""


def ssh_argv(command: str | None, route: SshRoute, host: str, port: int, connect_timeout: float) -> list[str]:
    """The ``ssh`` command line that forwards stdin/stdout to ``host:port`` on the far side of ``route``.

    Args:
        command: the program and its options (``--ssh-command``, split like a shell would); ``None``: ``ssh``.
        route: destination and SSH port.
        host / port: the node's address as seen from the SSH server.
        connect_timeout: seconds for ssh's own TCP connect (``ConnectTimeout``, rounded up).
    """
    # like GIT_SSH_COMMAND (which a shell runs): ~ and $VARIABLES in the words are expanded
    argv = [os.path.expandvars(os.path.expanduser(w)) for w in shlex.split(command)] if command else ["ssh"]
    if not argv:
        raise ValueError("the SSH command is empty")
    for option in (*_OPTIONS, f"ConnectTimeout={max(1, int(-(-connect_timeout // 1)))}"):
        argv += ["-o", option]
    if route.port is not None:
        argv += ["-p", str(route.port)]
    user, at, server = route.destination.rpartition("@")
    forward = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [*argv, "-W", forward, f"{user}{at}{server.strip('[]')}"]


class SshProcess:
    """One running ``ssh -W`` child and the local end of its socket pair (:attr:`sock`)."""

    def __init__(self, route: SshRoute, host: str, port: int, process: Process, sock: socket.socket) -> None:
        self.route = route
        self.host = host
        self.port = port
        self.process = process
        self.sock = sock
        self.label = route.url(host, port)
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        #: set once the child exited and its stderr was read to the end
        self.finished = anyio.Event()
        self._stopping = False
        self._terminated = False
        self._reported = False

    @classmethod
    async def start(
        cls, route: SshRoute, host: str, port: int, *, command: str | None, connect_timeout: float
    ) -> SshProcess:
        """Start the child (it connects in the background; frames can be written at once).

        Raises:
            SshLinkError: the SSH program cannot be started (not installed, not executable).
        """
        argv = ssh_argv(command, route, host, port, connect_timeout)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):
            _widen(end)
        try:
            process = await anyio.open_process(
                argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=-1,  # subprocess.PIPE
                start_new_session=True,
                env={**os.environ, "LC_ALL": "C"},  # English messages, for the diagnosis
            )
        except OSError as exc:
            ours.close()
            what = "--ssh-command / EXO_SSH_COMMAND" if command else "the OpenSSH client (`ssh`)"
            raise SshLinkError(
                f"cannot run {argv[0]!r} to reach {route.url(host, port)}: {exc.strerror or exc}; "
                f"install {what} or fix it"
            ) from None
        finally:
            theirs.close()
        ours.setblocking(False)
        log.debug("started %s (pid %d) for %s", shlex.join(argv), process.pid, route.url(host, port))
        return cls(route, host, port, process, ours)

    def diagnosis(self) -> str | None:
        """What went wrong, from ssh's stderr and exit status (``None`` if it says nothing)."""
        return diagnose(list(self.stderr), self.process.returncode, self.route, self.host, self.port)

    async def serve(self, run: Callable[[], Awaitable[None]], on_exit: Callable[[str], None]) -> None:
        """Run ``run()`` (the connection over :attr:`sock`) with the child beside it, then stop the child.

        When the child exits first, ``on_exit(diagnosis)`` is called (to fail the connection with it).
        """
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, on_exit)
                try:
                    await run()
                finally:
                    self._stopping = True
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stop()
            code = self.process.returncode
            if code and not self._terminated:  # it failed by itself (seen as the connection closing first)
                self._report()

    async def _watch(self, on_exit: Callable[[str], None]) -> None:
        await self._drain_stderr()
        await self.process.wait()
        self.finished.set()
        if not self._stopping:
            self._report()
            on_exit(self.diagnosis() or f"ssh to {self.route.ssh_target} exited")

    def _report(self) -> None:
        if not self._reported:
            self._reported = True
            why = self.diagnosis() or f"ssh exited with status {self.process.returncode}"
            log.warning("SSH link %s ended: %s", self.label, why)

    async def _drain_stderr(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        pending = b""
        try:
            async for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._note(line)
                if len(pending) > 4096:
                    self._note(pending)
                    pending = b""
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        if pending:
            self._note(pending)

    def _note(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.strip():
            self.stderr.append(line)
            log.debug("ssh %s: %s", self.route.ssh_target, line)

    async def stop(self) -> None:
        """Close our end (ssh then ends the channel and exits by itself), terminate the child if it does not
        (SIGKILL after a grace period) and reap it."""
        self._stopping = True
        self.sock.close()
        proc = self.process
        with anyio.move_on_after(_EOF_GRACE):
            await proc.wait()
        if proc.returncode is None:
            self._terminated = True
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
            with anyio.move_on_after(_TERM_GRACE):
                await proc.wait()
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
        if not self.finished.is_set():
            with anyio.move_on_after(_TERM_GRACE):
                await self._drain_stderr()
            self.finished.set()
        await proc.aclose()

    async def failure(self, error: BaseException, within: float = 3.0) -> BaseException:
        """The error to report for a link whose handshake failed with ``error``: ssh's diagnosis once the
        child has exited (waiting up to ``within`` seconds for it), else ``error`` itself."""
        self._reported = True  # the caller reports it
        with anyio.move_on_after(within):
            await self.finished.wait()
        exited = self.process.returncode is not None and not self._terminated  # not stopped by us
        why = self.diagnosis() if exited else None
        return SshLinkError(f"{self.label}: {why}") if why else error
