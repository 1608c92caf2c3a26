"""A fleet of real OpenSSH ``sshd`` servers on 127.0.0.1 for integration tests.

Plain helper module (no pytest dependency); the fixtures live in ``conftest.py``.

Layout of one fleet (``fleet.root``, a fresh 0755 directory)::

    client_ed25519[.pub]     shared client key (no passphrase)
    authorized_keys          shared, referenced by absolute path from every sshd_config
    known_hosts              one "[127.0.0.1]:PORT ssh-ed25519 ..." line per host
    ssh_config               one "Host <alias>" block per host
    hosts/<name>/
        ssh_host_ed25519_key[.pub]
        sshd_config
        sshd.pid
        sshd.log             sshd -e output (appended across restarts)
        data/                the host's remote "root", owned by the login user

The data dir is local and remote at once (same machine): ``fleet.path(name, rel)`` is
also the remote path. Remote commands start in the login user's (empty) home, not in the
data dir, so always use absolute paths on the remote side.

When run as root, the login user is a dedicated non-root account (``rstest``)
created on demand, so that "permission denied" on the remote side is real.
When run as a non-root user, sshd runs unprivileged and the login user is the
current user (sshd can only authenticate its own user in that mode).

Stopping a host kills the listening sshd *and* every per-connection process:
sshd calls setsid() in each connection child, so a process group kill is not
enough; the whole descendant tree (found via /proc) is frozen with SIGSTOP and
then SIGKILLed, which cuts live connections abruptly, like a crashed host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_USER",
    "FakeHost",
    "SSHFleet",
    "SSHFleetError",
    "find_sshd",
]

DEFAULT_USER = "rstest"
LOOPBACK = "127.0.0.1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_USER_LOCK = Path(tempfile.gettempdir()) / "sshfleet-useradd.lock"


class SSHFleetError(RuntimeError):
    """The fleet could not be set up, or an sshd failed to start."""


@dataclass
class FakeHost:
    """One sshd of the fleet. The fleet updates ``pid`` and ``host_public_key`` in place."""

    name: str
    port: int
    data_dir: Path
    host_key_path: Path
    host_public_key: str  # "ssh-ed25519 AAAA..." of the key the server currently uses
    log_path: Path
    config_path: Path
    pid: int | None = None  # pid of the listening sshd, None while stopped
    hostname: str = LOOPBACK
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def alias(self) -> str:
        """The ``Host`` alias in the fleet's ssh_config (same as ``name``)."""
        return self.name

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# --------------------------------------------------------------------------- helpers


def find_sshd() -> str | None:
    """Absolute path of sshd (sshd refuses to re-exec from a relative path)."""
    found = shutil.which("sshd")
    if found:
        return os.path.abspath(found)
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _find_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise SSHFleetError(f"{name!r} not found on PATH (install openssh-client)")
    return found


_version_cache: dict[str, tuple[int, int]] = {}


def _sshd_version(sshd: str) -> tuple[int, int]:
    """(major, minor) of OpenSSH; ``sshd -V`` (or the usage text of old ones) names it."""
    if sshd not in _version_cache:
        out = subprocess.run([sshd, "-V"], capture_output=True, text=True, timeout=10, check=False)
        m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
        _version_cache[sshd] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return _version_cache[sshd]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``path`` (overwriting); return "ssh-ed25519 AAAA..."."""
    for p in (path, path.with_name(path.name + ".pub")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    subprocess.run(
        [_find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    algo, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{algo} {blob}"


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ..." -- comm may contain spaces/parens
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) >= 2:
            children.setdefault(int(rest[1]), []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and all its descendants, including setsid()ed connection children.

    Freeze first (SIGSTOP, top-down, repeated until the tree is stable) so nothing can fork
    or reparent between the snapshot and the kill.
    """
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGSTOP)
        frozen: set[int] = set()
        for _ in range(50):
            tree = set(_descendants(proc.pid))
            new = tree - frozen
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        _signal(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - would be a kernel oddity
        raise SSHFleetError(f"sshd pid {proc.pid} did not die after SIGKILL") from e


_RUN_MARKER = "----- sshfleet: starting sshd for"


def _current_run(log: str) -> str:
    """The part of an sshd log written by the latest start."""
    return log[log.rfind(_RUN_MARKER) :]


def _make_traversable(path: Path) -> None:
    """Add o+x to ``path`` and its ancestors where missing, so a non-root user can reach it."""
    for p in [path, *path.parents]:
        st = p.stat()
        if not st.st_mode & 0o001:
            os.chmod(p, (st.st_mode & 0o7777) | 0o001)


def ensure_login_user(name: str = DEFAULT_USER) -> pwd.struct_passwd:
    """Create (if missing) and sanitize the non-root login user. Needs root.

    - system account, shell /bin/sh (no bash rc files), empty 0755 home /home/<name>
    - password field '*' (not '!'): with UsePAM no, sshd refuses "locked" accounts ('!...')
    """
    with open(_USER_LOCK, "a") as lock:  # serialize concurrent test processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            r = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    f"/home/{name}",
                    "--shell",
                    "/bin/sh",
                    "--password",
                    "*",
                    name,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            try:  # someone else may have created it meanwhile: fine either way
                pw = pwd.getpwnam(name)
            except KeyError:
                raise SSHFleetError(
                    f"could not create login user {name!r}: useradd exited {r.returncode}: "
                    f"{r.stderr.strip()}"
                ) from None
        if pw.pw_uid == 0:
            raise SSHFleetError(f"login user {name!r} must not be root")
        if pw.pw_shell != "/bin/sh":
            subprocess.run(["usermod", "--shell", "/bin/sh", name], check=True, timeout=60)
            pw = pwd.getpwnam(name)
        if _shadow_locked(name):
            subprocess.run(["usermod", "--password", "*", name], check=True, timeout=60)
        home = Path(pw.pw_dir)
        if not home.is_dir():
            home.mkdir(mode=0o755, parents=True)
            os.chown(home, pw.pw_uid, pw.pw_gid)
    return pw


def _shadow_locked(name: str) -> bool:
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split(":")
        if parts[0] == name and len(parts) > 1:
            return parts[1].startswith("!") or parts[1] == "*LK*"
    return False


# --------------------------------------------------------------------------- the fleet


class SSHFleet:
    """N real sshd servers on 127.0.0.1. Use as a context manager or call ``close()``.

    ``SSHFleet(n=2)`` names hosts h0, h1, ...; ``SSHFleet(names=["a", "b"])`` uses yours.
    """

    def __init__(
        self,
        n: int = 1,
        names: Sequence[str] | None = None,
        *,
        user: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        keep: bool = False,
        start_timeout: float = 10.0,
        home_in_data: bool = False,
    ) -> None:
        if names is None:
            names = [f"h{i}" for i in range(n)]
        names = list(names)
        if not names:
            raise ValueError("a fleet needs at least one host")
        for nm in names:
            if not _NAME_RE.match(nm):
                raise ValueError(f"bad host name {nm!r} (use letters, digits, '.', '_', '-')")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names in {names!r}")

        sshd = find_sshd()
        if sshd is None:
            raise SSHFleetError(
                "sshd not found (neither on PATH nor /usr/sbin/sshd): install openssh-server "
                "(.ci/run does: apt-get install -y openssh-server openssh-client)"
            )
        self.sshd: str = sshd
        self.ssh: str = _find_tool("ssh")
        self.start_timeout = start_timeout
        self.keep = keep
        # Every host logs in as the same account, whose home is shared by every fleet (and
        # every test running at once): a fleet that lays out an agent's default root
        # (~/.claude) gives each host a home of its own, its data dir, through sshd's SetEnv.
        self.home_in_data = home_in_data
        self._hosts: dict[str, FakeHost] = {}
        self._trusted: dict[str, str] = {}  # name -> public key written to known_hosts
        self._closed = False

        self.is_root = os.geteuid() == 0
        if self.is_root:
            pw = ensure_login_user(user or DEFAULT_USER)
            if not Path("/run/sshd").is_dir():  # privilege separation chroot dir
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
                os.chmod("/run/sshd", 0o755)
        else:
            pw = pwd.getpwuid(os.geteuid())
            if user is not None and user != pw.pw_name:
                raise SSHFleetError(f"not root: can only log in as {pw.pw_name!r}, not {user!r}")
        self.user: str = pw.pw_name
        self.uid: int = pw.pw_uid
        self.gid: int = pw.pw_gid

        self.root = Path(tempfile.mkdtemp(prefix="sshfleet-", dir=base_dir)).resolve()
        try:
            os.chmod(self.root, 0o755)
            _make_traversable(self.root)
            self.client_key = self.root / "client_ed25519"
            self.client_public_key = _keygen(self.client_key, "sshfleet-client")
            self.authorized_keys = self.root / "authorized_keys"
            self.authorized_keys.write_text(self.client_public_key + " sshfleet-client\n")
            os.chmod(self.authorized_keys, 0o644)  # sshd reads it with the user's uid
            self.known_hosts = self.root / "known_hosts"
            self.ssh_config = self.root / "ssh_config"
            (self.root / "hosts").mkdir(mode=0o755)

            for nm in names:
                self._hosts[nm] = self._create_host(nm)
            self._first_start(self.hosts)
            self._write_client_files()  # now that the ports are known
            for h in self.hosts:
                self._wait_ready(h)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- public API

    @property
    def names(self) -> list[str]:
        return list(self._hosts)

    @property
    def hosts(self) -> list[FakeHost]:
        return list(self._hosts.values())

    def host(self, name: str) -> FakeHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in fleet {self.names}") from None

    def __getitem__(self, name: str) -> FakeHost:
        return self.host(name)

    def __iter__(self) -> Iterator[FakeHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self._hosts)

    def __enter__(self) -> SSHFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self, name: str) -> None:
        """Kill this host's sshd and all its live connections (no-op if already stopped)."""
        h = self.host(name)
        if h._proc is not None:
            _kill_tree(h._proc)
            h._proc = None
        h.pid = None

    def start(self, name: str) -> None:
        """(Re)start this host's sshd on the same port with its current host key."""
        h = self.host(name)
        if h.running:
            return
        self._spawn(h)
        self._wait_ready(h)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def rotate_host_key(self, name: str) -> str:
        """Give the host a new host key WITHOUT updating known_hosts (provokes a mismatch).

        Returns the new public key ("ssh-ed25519 AAAA..."). The host is left running.
        """
        h = self.host(name)
        self.stop(name)
        h.host_public_key = _keygen(h.host_key_path, f"sshfleet-host-{name}")
        self.start(name)
        return h.host_public_key

    def trust_host_key(self, name: str) -> None:
        """Make known_hosts accept the host's current key again (undo a rotation)."""
        self._trusted[name] = self.host(name).host_public_key
        self._write_known_hosts()

    def write(
        self, name: str, relpath: str | os.PathLike[str], data: bytes | str, mode: int = 0o644
    ) -> Path:
        """Write a file into the host's data dir, owned by the login user; return its path.

        Missing parent directories are created (0755, owned by the login user).
        """
        path = self.path(name, relpath)
        self._mkdirs(path.parent)
        if isinstance(data, str):
            data = data.encode()
        path.write_bytes(data)
        self._chown(path)
        os.chmod(path, mode)
        return path

    def mkdir(self, name: str, relpath: str | os.PathLike[str]) -> Path:
        path = self.path(name, relpath)
        self._mkdirs(path)
        return path

    def path(self, name: str, relpath: str | os.PathLike[str] = "") -> Path:
        """Local path of ``relpath`` inside the host's data dir (must stay inside it)."""
        data = self.host(name).data_dir
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"relpath must be relative and stay inside the data dir: {relpath!r}")
        return data / rel

    def ssh_argv(self, name: str, *remote_argv: str) -> list[str]:
        """OpenSSH client argv: ``ssh -F <ssh_config> -o BatchMode=yes <alias> -- cmd...``.

        As always with ssh, the remote words are joined with spaces and run by the remote
        login shell (/bin/sh -c): quote them (shlex.quote) if they contain specials.
        """
        return [
            self.ssh,
            "-F",
            str(self.ssh_config),
            "-o",
            "BatchMode=yes",
            self.host(name).alias,
            "--",
            *remote_argv,
        ]

    def connect_kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect(**kw)`` without relying on ssh_config."""
        h = self.host(name)
        return {
            "host": h.hostname,
            "port": h.port,
            "username": self.user,
            "client_keys": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
            "config": [],  # ignore the invoking user's ~/.ssh/config
            "agent_path": None,  # and their ssh-agent
        }

    def logs(self) -> str:
        """All hosts' sshd logs, for failure reports."""
        return "\n".join(f"===== {h.name} ({h.log_path}) =====\n{h.log()}" for h in self.hosts)

    def close(self) -> None:
        """Stop exactly the sshd processes this fleet started; remove the fleet dir."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for h in self._hosts.values():
            try:
                if h._proc is not None:
                    _kill_tree(h._proc)
                    h._proc = None
                h.pid = None
            except BaseException as e:  # keep stopping the others
                errors.append(e)
        if not self.keep and hasattr(self, "root"):
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise errors[0]

    # ----------------------------------------------------------------- internals

    def _chown(self, path: Path) -> None:
        if self.is_root:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def _mkdirs(self, path: Path) -> None:
        missing: list[Path] = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=0o755)
            os.chmod(d, 0o755)
            self._chown(d)

    def _create_host(self, name: str) -> FakeHost:
        hdir = self.root / "hosts" / name
        hdir.mkdir(mode=0o755)
        data = hdir / "data"
        data.mkdir(mode=0o755)
        self._chown(data)
        key = hdir / "ssh_host_ed25519_key"
        pub = _keygen(key, f"sshfleet-host-{name}")
        self._trusted[name] = pub
        return FakeHost(
            name=name,
            port=0,  # chosen in _first_start
            data_dir=data,
            host_key_path=key,
            host_public_key=pub,
            log_path=hdir / "sshd.log",
            config_path=hdir / "sshd_config",
        )

    def _sshd_config(self, h: FakeHost) -> str:
        lines = [
            f"ListenAddress {LOOPBACK}",
            f"Port {h.port}",
            f"HostKey {h.host_key_path}",
            f"PidFile {h.config_path.parent / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin no",
            "MaxSessions 10",
            "MaxStartups 100:30:200",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            f"AllowUsers {self.user}",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
        ]
        if self.home_in_data:
            lines.append(f"SetEnv HOME={h.data_dir}")
        if _sshd_version(self.sshd) >= (9, 8):
            # 9.8+ penalizes sources that fail auth or drop before auth (our readiness
            # probe, host-key-mismatch tests) by refusing them for a while: disable.
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"

    def _write_client_files(self) -> None:
        blocks = []
        for h in self._hosts.values():
            blocks.append(
                f"Host {h.alias}\n"
                f"    HostName {h.hostname}\n"
                f"    Port {h.port}\n"
                f"    User {self.user}\n"
                f"    IdentityFile {self.client_key}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts}\n"
                f"    GlobalKnownHostsFile /dev/null\n"
                f"    StrictHostKeyChecking yes\n"
                f"    UpdateHostKeys no\n"
                f"    PreferredAuthentications publickey\n"
                f"    ConnectTimeout 10\n"
                f"    LogLevel ERROR\n"
            )
        self.ssh_config.write_text("\n".join(blocks))
        self._write_known_hosts()

    def _write_known_hosts(self) -> None:
        lines = [f"[{h.hostname}]:{h.port} {self._trusted[h.name]}\n" for h in self._hosts.values()]
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.known_hosts)

    def _spawn(self, h: FakeHost) -> None:
        """Write the sshd_config and start sshd (without waiting for it)."""
        h.config_path.write_text(self._sshd_config(h))
        with open(h.log_path, "ab") as log:
            log.write(f"{_RUN_MARKER} {h.name} on port {h.port}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", str(h.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # signals to our process group do not reach it
                close_fds=True,
            )
        h._proc = proc
        h.pid = proc.pid

    def _first_start(self, hosts: list[FakeHost]) -> None:
        """Start all sshds in parallel on free ports; a port grabbed by someone else between
        probing and sshd's bind() shows as "Address already in use": retry with a new port."""
        pending = hosts
        for attempt in range(5):
            for h in pending:
                h.port = _free_port()
                self._spawn(h)
            clashed = []
            for h in pending:
                if self._wait_listening(h, self.start_timeout, raise_on_fail=False):
                    continue
                if "Address already in use" in _current_run(h.log()) and attempt < 4:
                    clashed.append(h)
                else:
                    self._fail(h, "sshd did not start listening")
            if not clashed:
                return
            pending = clashed

    def _wait_listening(self, h: FakeHost, timeout: float, raise_on_fail: bool = True) -> bool:
        marker = f"Server listening on {LOOPBACK} port {h.port}."
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            assert h._proc is not None
            if marker in _current_run(h.log()):
                return True
            if h._proc.poll() is not None or time.monotonic() > deadline:
                if h._proc.poll() is None:
                    _kill_tree(h._proc)
                h._proc = None
                h.pid = None
                if raise_on_fail:
                    self._fail(h, "sshd did not start listening")
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _wait_ready(self, h: FakeHost) -> None:
        """Wait until sshd logs that it listens AND answers a TCP connect with its banner."""
        self._wait_listening(h, self.start_timeout)
        deadline = time.monotonic() + self.start_timeout
        last_err: str = ""
        while time.monotonic() < deadline:
            if not h.running:
                self._fail(h, "sshd exited during startup")
            try:
                with socket.create_connection((LOOPBACK, h.port), timeout=2) as s:
                    s.sendall(b"SSH-2.0-sshfleet_probe\r\n")  # keeps the sshd log tidy
                    banner = b""
                    while b"\n" not in banner and len(banner) < 256:
                        chunk = s.recv(256)
                        if not chunk:
                            break
                        banner += chunk
                if banner.startswith(b"SSH-2.0-"):
                    return
                last_err = f"unexpected banner {banner!r}"
            except OSError as e:
                last_err = repr(e)
            time.sleep(0.02)
        self._fail(h, f"sshd not accepting connections ({last_err})")

    def _fail(self, h: FakeHost, what: str) -> None:
        if h._proc is not None:
            _kill_tree(h._proc)
            h._proc = None
            h.pid = None
        raise SSHFleetError(
            f"{what}: host {h.name!r} port {h.port} ({self.sshd}, config {h.config_path})\n"
            f"--- sshd log (tail) ---\n{h.log()[-20000:]}"
        )
