"""Which ssh_config files are read and how, against OpenSSH's ssh: the system-wide file after
the user's, ``Match exec`` tokens, algorithm names asyncssh leaves out, and
PubkeyAcceptedAlgorithms applied. The system-wide file is always a temporary one here
(``sshconfig.SYSTEM_CONFIG`` pointed at it): nothing is written under /etc."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import logging
import os
import pathlib
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import tracemalloc
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncssh
import msgspec
import pytest
from conftest import MakeFleet
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from sshfleet import SSHFleet

from remote_sync.cli import main
from remote_sync.errors import AuthenticationError, ConfigError, HostKeyError
from remote_sync.events import WarningEvent
from remote_sync.ssh import configreader, filecache, hostkeys, lookup, options, sshconfig
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import SSHPool
from remote_sync.ssh.stream import run_command


@pytest.fixture
def one(ssh_fleet: MakeFleet) -> SSHFleet:
    return ssh_fleet(1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $HOME of its own, with an empty ~/.ssh, and a system-wide file under tmp/etc/ssh."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    etc = tmp_path / "etc" / "ssh"
    etc.mkdir(parents=True)
    # raising=False: a release without the attribute fails on what it reads, not here.
    monkeypatch.setattr(sshconfig, "SYSTEM_CONFIG", str(etc / "ssh_config"), raising=False)
    return home


def _ssh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    ssh = shutil.which("ssh")
    assert ssh is not None, "the ssh client is needed (CI installs openssh-client)"
    return subprocess.run(
        [ssh, *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # ssh -G prints a user decoded from %F0 as that raw byte
        stdin=subprocess.DEVNULL,
        timeout=30,
        env=env,
    )


# --- the system-wide file ---------------------------------------------------------------


async def test_the_system_wide_file_is_read_after_the_user_s_as_ssh_reads_it(
    one: SSHFleet, home: Path, tmp_path: Path
) -> None:
    """ssh without -F reads ~/.ssh/config, then /etc/ssh/ssh_config (first value wins), whose
    relative Include paths are under /etc/ssh; only ~/.ssh/config was read. Here the key and
    known_hosts come from a file the system-wide one Includes, the Port from the user's
    file (the system's says another), and a file of the same name under ~/.ssh is not read.
    An ssh_config named in the inventory is read as ``ssh -F`` reads it: alone."""
    h = one.host("h0")
    (home / ".ssh" / "config").write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {one.user}\n"
    )
    system = Path(sshconfig.SYSTEM_CONFIG)
    (system.parent / "ssh_config.d").mkdir()
    system.write_text("Include ssh_config.d/*.conf\nHost *\n  Port 1\n")
    (system.parent / "ssh_config.d" / "box.conf").write_text(
        f"Host box\n  IdentityFile {one.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {one.known_hosts}\n"
    )
    (home / ".ssh" / "ssh_config.d").mkdir()
    (home / ".ssh" / "ssh_config.d" / "box.conf").write_text("Host box\n  User nobody-here\n")
    by_default = Endpoint(address="box")
    async with SSHPool() as pool:
        assert pool.preflight(by_default, "box") is None
        assert await run_command(pool, by_default, ["echo", "ok"], host="box") == b"ok\n"
    named = Endpoint(address="box", ssh_config=("~/.ssh/config",), known_hosts=str(one.known_hosts))
    resolved = options.prepare(named, "box").resolved
    assert (resolved.port, resolved.identities) == (h.port, ())


def test_the_system_wide_file_s_includes_follow_ssh_s_rules(home: Path) -> None:
    """The system-wide file itself is not checked for others' write access (ssh trusts what
    root keeps there, and reads it without the check), the files it Includes are; a ``~``
    path in its Include lines is refused ("bad include path"), and so is an option ssh does
    not know there. Before, the file was not read at all: nothing was refused."""
    system = Path(sshconfig.SYSTEM_CONFIG)
    (home / ".ssh" / "config").write_text("Host box\n  HostName 127.0.0.1\n")
    known = str(home / ".ssh" / "config")
    ep = Endpoint(address="box", known_hosts=known)
    system.write_text("Host *\n  ServerAliveInterval 30\n")
    system.chmod(0o666)
    assert SSHPool().preflight(ep, "box") is None
    included = system.parent / "more.conf"
    included.write_text("Host *\n  ServerAliveCountMax 3\n")
    included.chmod(0o666)
    system.write_text("Include more.conf\n")
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(included))
    assert "bad owner or permissions" in problem.message
    assert f"Include line {system} line 1" in problem.message
    included.chmod(0o644)
    assert SSHPool().preflight(ep, "box") is None
    system.write_text("Host *\n  Include ~/.ssh/extra.conf\n")
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError) and problem.path == str(system), problem
    assert problem.message.startswith("ssh_config line 2: bad include path '~/.ssh/extra.conf'")
    system.write_text("Host *\n  NoSuchOption yes\n")
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError) and problem.path == str(system), problem
    assert "unknown option 'nosuchoption'" in problem.message
    # Named in the inventory (ssh -F): the system-wide file is not read.
    named = Endpoint(address="box", ssh_config=("~/.ssh/config",), known_hosts=known)
    assert SSHPool().preflight(named, "box") is None


# --- Match exec tokens -------------------------------------------------------------------

#: Every token ssh's Match exec expands (this machine's ssh knows no %j yet).
_TOKENS = "%C %L %d %h %k %l %n %p %r %u %i"


def test_match_exec_tokens_are_expanded_as_ssh_expands_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncssh ran a Match exec command as written, ``%h`` and all; ssh expands its tokens
    first, from what the lines above set. The same command, run by ssh -G and by the
    pre-flight, writes the same words."""
    if os.path.expanduser("~") != pwd.getpwuid(os.getuid()).pw_dir:
        monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)  # ssh's %d is pw_dir
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box\n  HostName 127.0.0.1\n  Port 2345\n  User someone\n  HostKeyAlias boxkey\n"
        f"Match exec \"printf '%%s\\n' {_TOKENS} >$RS_TOKENS_OUT\"\n  ServerAliveCountMax 7\n"
    )
    by_ssh, by_us = tmp_path / "ssh.txt", tmp_path / "us.txt"
    done = _ssh("-F", str(cfg), "-G", "box", env={**os.environ, "RS_TOKENS_OUT": str(by_ssh)})
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("RS_TOKENS_OUT", str(by_us))
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert SSHPool().preflight(ep, "box") is None
    assert by_us.read_text() == by_ssh.read_text()
    words = by_us.read_text().split("\n")
    assert [words[i] for i in (3, 4, 6, 7, 8)] == ["127.0.0.1", "boxkey", "box", "2345", "someone"]


@pytest.mark.parametrize("command", ["test %Q", "test 100%", "true %h %Z"])
def test_a_token_ssh_does_not_expand_in_match_exec_is_refused(command: str, tmp_path: Path) -> None:
    """ssh stops on it ("unknown key", "invalid format"), even where the Match line does
    not apply; asyncssh ran the command with the text as it is."""
    cfg = tmp_path / "config"
    cfg.write_text(f'Host box\n  Port 2222\nMatch host other exec "{command}"\n  Port 1\n')
    assert _ssh("-F", str(cfg), "-G", "box").returncode != 0
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(cfg))
    assert problem.message.startswith("ssh_config line 3: Match exec ")


@pytest.mark.parametrize(
    ("user", "command", "said"),
    [
        (None, "env TOKEN=S3CRET curl -H S3CRET %Q", "%Q is no token ssh expands there"),
        (None, "curl -H S3CRET 100%", "a '%' at the end is no token"),
        ("a;b", "curl -H S3CRET -u %r", "the remote user name %r is 'a;b'"),
    ],
)
def test_a_match_exec_error_names_the_command_by_its_program_alone(
    user: str | None, command: str, said: str, tmp_path: Path
) -> None:
    """A Match exec command's arguments may hold a secret (a token for a VPN check), and its
    errors quoted the whole command into JSON events and cron's mail: they name its program
    alone, as a ProxyCommand's do."""
    cfg = tmp_path / "config"
    cfg.write_text(f'Host box\n  Port 2222\nMatch exec "{command}"\n  Port 1\n')
    ep = Endpoint(address="box", user=user, ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(cfg))
    program = "env" if command.startswith("env") else "curl"
    assert problem.message.startswith(f"ssh_config line 3: Match exec {program} …: "), problem
    assert said in problem.message, problem.message
    assert "S3CRET" not in str(problem), problem


#: A Match exec token where a command may hold it: in single quotes, in double quotes, bare.
_CONTEXTS = ("'%r'", '"%r"', "%r")


@pytest.mark.parametrize("context", _CONTEXTS)
def test_a_match_exec_token_value_stays_data(context: str, tmp_path: Path) -> None:
    """ssh puts a token's value in the command as it is, and so does the pre-flight now: a
    value of letters, digits and ``@%+=:,./_-`` is one word's text for the shell wherever
    the token stands. It shell-quoted each value before, which inside the user's own quotes
    cancelled them: ``test '%r' = admin`` with the user ``x;touch F;:`` ran ``touch``. A
    value with any other character is refused, naming the token, the value, the file and
    line, and the command is never run."""
    out, pwned = tmp_path / "out", tmp_path / "pwned"
    cfg = tmp_path / "config"
    cfg.write_text(
        f'Host box\n  User nobody\nMatch exec "printf %%s {context} >{out}"\n  Port 2345\n'
    )
    user = "a.b-c_d@corp=x,y:z+1%2/3"
    ep = Endpoint(address="box", user=user, ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert SSHPool().preflight(ep, "box") is None
    assert out.read_text() == user
    assert options.prepare(ep, "box").resolved.port == 2345
    out.unlink()
    for hostile in (f"x;touch {pwned};:", f"x';touch {pwned};'", f'x"$(touch {pwned})"', "a b"):
        ep = Endpoint(address="box", user=hostile, ssh_config=(str(cfg),), known_hosts=str(cfg))
        problem = SSHPool().preflight(ep, "box")
        assert isinstance(problem, ConfigError), (hostile, problem)
        assert (problem.host, problem.path) == ("box", str(cfg))
        assert problem.message.startswith("ssh_config line 3: Match exec ")
        assert f"the remote user name %r is {hostile!r}" in problem.message
        assert problem.hint is not None and "take %r out of the Match exec command" in problem.hint
    assert not pwned.exists() and not out.exists()


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("host other exec {}", False),  # an earlier criterion fails: not run, as in ssh
        ("!host box exec {}", False),
        ("user nobody exec {}", False),
        ('exec "true" host other exec {}', False),
        ("host box exec {}", True),  # every earlier one holds: it would run
        ("exec {}", True),
        ("!exec {} host other", True),  # run before the criterion that fails
    ],
)
def test_an_unsafe_token_value_is_refused_only_where_the_command_would_run(
    line: str, refused: bool, tmp_path: Path
) -> None:
    """ssh expands a Match exec command, then skips it when a criterion before it on the
    line failed (readconf.c: "skip execution if prior predicate failed"); asyncssh skips it
    too. A target's token with a value the shell could read as code was refused on every
    Match line, and a user ``DOMAIN\\u`` could not use an ssh_config whose ``Match host
    other exec "test %r = x"`` was not about its host at all. It is refused where the
    command would run, and ssh -G reads every one of these lines."""
    user = "DOMAIN\\u"
    out, pwned = tmp_path / "out", tmp_path / "pwned"
    cfg = tmp_path / "config"
    command = f'"test %r = x || touch {pwned}"'
    cfg.write_text(  # in quotes, "\\\\" is one backslash for both readers
        f'Host box\n  User "DOMAIN\\\\u"\nMatch {line.format(command)}\n'
        f'  Port 2345\nMatch exec "printf %%s %p >{out}"\n  ServerAliveCountMax 7\n'
    )
    assert _ssh("-F", str(cfg), "-G", "box").returncode == 0
    pwned.unlink(missing_ok=True)
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    if refused:
        assert isinstance(problem, ConfigError), problem
        assert problem.message.startswith("ssh_config line 3: Match exec ")
        assert f"the remote user name %r is {user!r}" in problem.message
    else:
        assert problem is None
        assert out.read_text() == "22"  # the lines below are read, the skipped one set nothing
    assert not pwned.exists()


def test_an_unknown_token_is_refused_on_a_line_that_does_not_apply_after_an_unsafe_one(
    tmp_path: Path,
) -> None:
    """ssh expands the command of a Match line that does not apply too, and stops on a
    token it does not know there, whatever comes before it."""
    cfg = tmp_path / "config"
    cfg.write_text('Host box\n  User a;b\nMatch host other exec "test %r %Z"\n  Port 1\n')
    assert _ssh("-F", str(cfg), "-G", "box").returncode != 0
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert "%Z is no token ssh expands there" in problem.message


_SAFE = "abcXYZ019@%+=:,./_-"
_VALUES = st.one_of(
    st.text(_SAFE, max_size=20),
    st.text(st.characters(exclude_characters="\0"), max_size=20),
    # Letters and digits of other scripts, which ssh takes in host and user names.
    st.text(st.characters(categories=("Lu", "Ll", "Lo", "Nd"), min_codepoint=0x80), max_size=8),
)


def _unsafe(value: str) -> bool:
    """Whether ``value`` holds a character the expansion refuses: in ASCII, anything but
    letters, digits and ``@%+=:,./_-``; past it, what is no letter or digit."""
    return any(not c.isalnum() and (not c.isascii() or c not in "@%+=:,./_-") for c in value)


@settings(max_examples=100, deadline=None)
@given(value=_VALUES, literal=st.text("abc =%", max_size=10))
def test_expanded_token_values_are_refused_or_data(value: str, literal: str) -> None:
    """Whatever a value holds, it is either refused or, run by the shell, exactly the value,
    in single quotes, in double quotes or bare; ``%%`` is one ``%``. A value of the safe
    characters is never refused."""
    tokens = dict.fromkeys("CLdhklnpruij", "v") | {"r": value}
    text = literal.replace("%", "%%")
    for context in _CONTEXTS:
        command = f"printf %%s {context}; printf '|%%s' {shlex.quote(text)}"
        try:
            expanded = sshconfig.expand_match_exec(command, tokens)
        except ValueError as exc:
            assert "the remote user name %r is " in str(exc)
            assert _unsafe(value)
            continue
        assert not _unsafe(value)
        done = subprocess.run(["/bin/sh", "-c", expanded], capture_output=True, check=True)
        assert done.stdout.decode("utf-8", "surrogateescape") == f"{value}|{literal}"


@settings(max_examples=100, deadline=None)
@given(value=_VALUES, token=st.sampled_from(sshconfig.PROXY_COMMAND_TOKENS))
def test_a_proxy_command_s_token_values_are_refused_or_data(value: str, token: str) -> None:
    """The same for a ProxyCommand, whose every token is a value of the host to reach (%h
    %k %n %p %r): refused when the shell could read it as code, else, run by the shell,
    exactly the value. They went in unchecked (the pool looked for %h and %r alone, in the
    expanded command)."""
    tokens = dict.fromkeys(sshconfig.PROXY_COMMAND_TOKENS, "v") | {token: value}
    for context in _CONTEXTS:
        command = f"printf %%s {context.replace('%r', '%' + token)}"
        try:
            expanded = sshconfig.expand_proxy_command(command, tokens)
        except sshconfig.UnsafeTokenValue as exc:
            assert f" %{token} is {value!r}, which holds a character the shell" in str(exc)
            assert str(exc).startswith("ProxyCommand printf …: "), exc
            assert exc.hint.endswith(f"or take %{token} out of the ProxyCommand"), exc.hint
            assert _unsafe(value)
            continue
        assert not _unsafe(value)
        done = subprocess.run(["/bin/sh", "-c", expanded], capture_output=True, check=True)
        assert done.stdout.decode("utf-8", "surrogateescape") == value


def test_a_host_or_user_name_in_another_script_is_put_in() -> None:
    """ssh takes a host or user name of non-ASCII letters from its command line (OpenSSH
    9.6's valid_hostname and valid_ruser refuse ASCII punctuation, blanks and control
    characters); a Match exec command refused it."""
    tokens = dict.fromkeys("CLdhklnpruij", "v") | {"h": "bücher.例え.jp", "r": "józef"}
    assert sshconfig.expand_match_exec("test %r@%h", tokens) == "test józef@bücher.例え.jp"
    assert sshconfig.expand_proxy_command("nc %h %r", tokens) == "nc bücher.例え.jp józef"


def test_this_machine_s_own_token_values_go_in_as_ssh_puts_them() -> None:
    """A home directory, local host or user name is this machine's, not the inventory's:
    put in as it is (ssh does the same), even with a blank; the user's quotes keep it."""
    tokens = dict.fromkeys("CLdhklnpruij", "v") | {"d": "/home/a b", "u": "a b"}
    command = sshconfig.expand_match_exec("test -d '%d' && echo \"%u\"", tokens)
    assert command == "test -d '/home/a b' && echo \"a b\""


@pytest.mark.parametrize(
    "proxy_jump",
    ["admin@bastion:2222", "first,ops@second:2200,ssh://admin@bastion:2222", "a,u@bastion"],
)
def test_j_and_the_connection_hash_name_the_last_jump_host_alone(
    proxy_jump: str, tmp_path: Path
) -> None:
    """ssh's %j, and the jump host in its %C (OpenSSH 9.6+: SHA-1 of %l%h%p%r%j), is the
    host name of the last ProxyJump hop only (readconf.c's parse_jump), not the whole
    ProxyJump value, which both were."""
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  User someone\n  ProxyJump {proxy_jump}\n"
        f"Match exec \"printf '%%s\\n' %j %C >{tmp_path}/out.%n\"\n  ServerAliveCountMax 7\n"
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert SSHPool().preflight(ep, "box") is None
    jump, connection = (tmp_path / "out.box").read_text().split()
    hashed = f"{socket.gethostname()}127.0.0.122someonebastion"
    assert (jump, connection) == ("bastion", hashlib.sha1(hashed.encode()).hexdigest())


def test_a_config_has_one_connection_hash_with_its_jump_host(tmp_path: Path) -> None:
    """%C is hashed one way for the whole config: with the last ProxyJump hop's host, as
    OpenSSH 9.6 and later hash it (SHA-1 of %l%h%p%r%j), in IdentityFile, CertificateFile
    and ProxyCommand as in Match exec. asyncssh's (OpenSSH 9.2's) had no jump host, so an
    IdentityFile id_%C and a Match exec's %C named two hashes no ssh release gives at once."""
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  User someone\n  ProxyJump admin@bastion:2222\n"
        f"  IdentityFile {tmp_path}/id_%C\n  CertificateFile {tmp_path}/cert_%C\n"
        f'Match exec "printf %C >{tmp_path}/out"\n  ServerAliveCountMax 7\n'
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "box").resolved
    hashed = f"{socket.gethostname()}127.0.0.122someonebastion"
    connection = hashlib.sha1(hashed.encode()).hexdigest()
    assert (tmp_path / "out").read_text() == connection
    assert [*resolved.identities, *resolved.certificates] == [
        f"{tmp_path}/id_{connection}",
        f"{tmp_path}/cert_{connection}",
    ]


@pytest.mark.parametrize(
    ("proxy_jump", "host"),
    [
        (None, ""),
        ("none", ""),
        ("NONE", ""),
        ("bastion", "bastion"),
        ("a@b@bastion:22", "bastion"),
        ("ssh://admin@bastion:2222/", "bastion"),
        ("one,two,[2001:db8::1]:2222", "2001:db8::1"),
        ("u@[::1]", "::1"),
    ],
)
def test_the_jump_host_is_parsed_as_ssh_parses_it(proxy_jump: str | None, host: str) -> None:
    assert sshconfig.jump_host(proxy_jump) == host


@pytest.mark.parametrize(
    ("hop", "parsed"),
    [
        ("bastion", (None, "bastion", None)),
        ("a@b@bastion:22", ("a@b", "bastion", 22)),
        ("ssh://admin@bastion:2222/", ("admin", "bastion", 2222)),
        ("[2001:db8::1]:2222", (None, "2001:db8::1", 2222)),
        ("u@[::1]", ("u", "::1", None)),
    ],
)
def test_a_jump_hop_is_read_as_ssh_reads_it(hop: str, parsed: tuple[object, ...]) -> None:
    assert sshconfig.jump_hop(hop) == parsed


@pytest.mark.parametrize(
    "hop", ["host:x", "[::1]x", "a:b:c", "u@", "host:0", "host:65536", "h:22/"]
)
def test_a_jump_hop_with_a_bad_port_is_refused(hop: str) -> None:
    with pytest.raises(ValueError):
        sshconfig.jump_hop(hop)


@pytest.mark.parametrize(
    ("hop", "parsed"),
    [
        ("ssh://us%40er@jh", ("us@er", "jh", None)),  # the user is URL-decoded
        ("ssh://a+b%3B@jh", ("a b;", "jh", None)),
        ("ssh://us;fingerprint=x@jh:2200", ("us", "jh", 2200)),  # parameters dropped
        ("ssh://u@JH.", ("u", "JH", None)),  # the host is not; one trailing dot dropped
        ("ssh://u@jh:", ("u", "jh", None)),
        ("ssh://u@[jh]:22/", ("u", "jh", 22)),
        ("ssh://jh", (None, "jh", None)),
    ],
)
def test_a_jump_uri_is_decoded_as_ssh_decodes_it(hop: str, parsed: tuple[object, ...]) -> None:
    """As OpenSSH 9.2 reads them (``ssh -G`` prints the hop it made of each)."""
    assert sshconfig.jump_hop(hop) == parsed


@pytest.mark.parametrize(
    "hop",
    [
        "ssh://u@jh/path",  # a path
        "ssh://u@jh:22/x",
        "ssh://u@jh//",
        "ssh://u@jh:/",
        "ssh://a@b@jh",  # the first @ ends the user
        "ssh://%zz@jh",  # not an escape
        "ssh://u%00v@jh",
        "ssh://@jh",  # an empty user
        "ssh://;x@jh",
        "ssh://u@J%48",  # the host is not decoded
        "ssh://u@jh;x",
        "ssh://u@-jh",
        "ssh://u@a..b",
        "ssh://u@[::1]:2200",  # no IPv6 address in a URI
        "ssh://u@",
        "ssh://u@jh:\uff12\uff12",  # full-width digits are no port (ssh refuses them too)
        "ssh://u@jh:\u00b2",
        # Stricter than ssh, which sends these bytes as the user: asyncssh takes text.
        "ssh://a%FF@jh",
        # A control character, which 9.2 sends (10.1 refuses it) and asyncssh cannot.
        "ssh://%0a@jh",
        "ssh://a%09b@jh",
        "ssh://a%7F@jh",
        "a\x04b@jh",
    ],
)
def test_a_jump_uri_ssh_refuses_is_refused(hop: str) -> None:
    with pytest.raises(ValueError) as refused:
        sshconfig.jump_hop(hop)
    assert type(refused.value) is ValueError  # a reason of ours, not int()'s or a codec's


def _ssh_jump_hop(hop: str, tmp_path: Path) -> tuple[str | None, str, int | None] | None:
    """The ProxyJump hop ``hop`` as ``ssh -G`` prints it (``[user@]host[:port]``, its user
    decoded), or None where ssh refuses it. Its value is the rest of the output (ssh -G
    prints it last), not of the line: a user decoded from ``%0a`` holds a newline."""
    cfg = tmp_path / "jump_config"
    cfg.write_text(f"Host box\n  ProxyJump {hop}\n")
    done = _ssh("-F", str(cfg), "-G", "box")
    if done.returncode != 0:
        assert "Invalid ProxyJump" in done.stderr, done.stderr
        return None
    printed = done.stdout.partition("\nproxyjump ")[2]
    assert printed.endswith("\n"), done.stdout
    user, _, rest = printed.removesuffix("\n").rpartition("@")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    # ssh prints a host of digits and dots in brackets (readconf.c's dump_client_config).
    return user or None, host.removeprefix("[").removesuffix("]"), int(port) if port else None


@settings(max_examples=150, deadline=None)
@given(
    user=st.one_of(st.none(), st.text("aZ0%4F+;@", max_size=6)),
    host=st.text("aZ0.-_%[]:;@", max_size=6),
    tail=st.text("0:/2", max_size=4),
)
@example(user="%0a", host="0", tail="")  # a user that decodes to a newline
@example(user="%F0", host="0", tail="")  # a user that decodes to bytes that are not UTF-8
def test_a_jump_uri_is_read_as_ssh_reads_it(
    user: str | None, host: str, tail: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whatever the URI holds, ours and ssh -G refuse it alike or make the same hop of it
    (a port is a number here, never a service name, which this alphabet cannot spell), but
    for a user with a control character (``%0a``, ``%04``): OpenSSH 9.2 reads it (and puts
    it unquoted in the ``ssh -l USER`` command it runs for the hop, where a newline ends the
    command), 10.1 and later refuse it there, and the SSH library remote-sync uses cannot
    send it: refused here. The same for a user whose bytes are not UTF-8 (``%F0``), which
    ssh takes as they are and which that library cannot send either."""
    hop = "ssh://" + ("" if user is None else f"{user}@") + host + tail
    try:
        ours: tuple[str | None, str, int | None] | None = sshconfig.jump_hop(hop)
    except ValueError:
        ours = None
    by_ssh = _ssh_jump_hop(hop, tmp_path_factory.mktemp("hop"))
    if (
        by_ssh is not None
        and by_ssh[0] is not None
        and any(
            unicodedata.category(char) == "Cc" or "\udc80" <= char <= "\udcff" for char in by_ssh[0]
        )
    ):
        by_ssh = None
    assert ours == by_ssh, hop


# --- how a line splits into words ---------------------------------------------------------


def _ssh_values(cfg: Path, key: str) -> list[str] | None:
    """The values ``ssh -G box`` prints for ``key`` (as written, to the line's end), or None
    where ssh refuses the config."""
    done = _ssh("-F", str(cfg), "-G", "box")
    if done.returncode != 0:
        return None
    lines = done.stdout.split("\n")
    return [line[len(key) + 1 :] for line in lines if line.startswith(f"{key} ")]


def _our_values(cfg: Path, option: str) -> list[str] | None:
    """The values asyncssh's reading of ``cfg`` for the host ``box``, as the pool makes it
    read, gives ``option`` (the reading refused: None), the HostKeyAlias lowercased as ssh
    has it. (A User with a tab, which ssh takes, is refused here: asyncssh cannot send it.)"""
    try:
        config = asyncssh.config.SSHClientConfig.load(
            None, [str(cfg)], False, False, False, "me", (), "box", ()
        )
    except asyncssh.ConfigParseError:
        return None
    value = config.get(option)
    if value is None:
        return []
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


#: The options whose value ``ssh -G`` prints as it read it (the alias lowercased), and the
#: names it prints them under.
_PRINTED = {"User": "user", "HostKeyAlias": "hostkeyalias", "IdentityFile": "identityfile"}


@settings(max_examples=80, deadline=None)
@given(
    option=st.sampled_from(sorted(_PRINTED)),
    separator=st.sampled_from([" ", "\t", "=", " = ", "\t=\t", "  "]),
    value=st.text("aZ\\\"'# \t=", min_size=1, max_size=8),
)
def test_a_line_splits_into_the_words_ssh_splits_it_into(
    option: str, separator: str, value: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whatever quotes, backslashes, blanks, ``#`` and ``=`` a value holds, the pre-flight's
    reading and ssh -G (OpenSSH's argv_split) refuse it alike or read the same value. A
    value ssh refuses as empty ("Missing argument") may be read as empty here (asyncssh
    takes an empty value; the pre-flight's walk refuses it, not the reading compared
    here)."""
    cfg = tmp_path_factory.mktemp("words") / "config"
    cfg.write_text(f"Host box\n  {option}{separator}{value}\n")
    by_ssh = _ssh_values(cfg, _PRINTED[option])
    ours = _our_values(cfg, option)
    if by_ssh is None:
        assert ours in (None, [""]), (cfg.read_text(), ours)
    elif ours is None and option == "User" and any("\t" in user for user in by_ssh):
        # A User with a tab: ssh sends it, asyncssh cannot (SASLprep), so the reading refuses
        # it with its line (test_a_user_name_the_connection_cannot_send_...); split alike.
        pass
    else:
        assert ours == by_ssh, cfg.read_text()


def test_a_backslash_ssh_keeps_is_kept(tmp_path: Path) -> None:
    """ssh takes a backslash for an escape only before a backslash, a quote or (outside
    quotes) a space, and keeps any other: ``User CORP\\u`` is the Windows domain user
    ``CORP\\u`` for ssh, and was ``CORPu`` here (shlex dropped it). ``User="a=b"`` is
    ``a=b`` (asyncssh took ``User=a=b`` for an unknown keyword), ``Host box=x`` one pattern
    that ``box`` does not match, ``IdentityFile = =k`` the file ``=k``, and ``#`` only starts
    a comment at the start of a word, as for ssh -G."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box=x\n  Port 1\n"
        "Host box\n  User CORP\\u\n  HostKeyAlias a#b'c d'\\q\n  IdentityFile = =k\\ 1\n"
        'Host other\n  User="a=b"\n'
    )
    expected = {"User": "CORP\\u", "HostKeyAlias": "a#bc d\\q", "IdentityFile": "=k 1"}
    for option, value in expected.items():
        assert _our_values(cfg, option) == [value] == _ssh_values(cfg, _PRINTED[option])
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "box").resolved
    assert (resolved.user, resolved.port) == ("CORP\\u", 22)
    ep = Endpoint(address="other", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert options.prepare(ep, "other").resolved.user == "a=b"


def test_a_quoted_keyword_is_read_as_ssh_reads_it(tmp_path: Path) -> None:
    """A keyword in quotes that do not close is a line ssh drops (it was applied here: the
    connection went to another HostName than ssh's); after a closed one, the value starts
    right after the quote (``"User"=alice`` is the user ``=alice``); a quote right after an
    unquoted keyword is an error, as ssh refuses the file."""
    cfg = tmp_path / "config"
    cfg.write_text('Host box\n  "HostName evil.example\n  "Port 2200\n  "User"=alice\n')
    assert _ssh_values(cfg, "hostname") == ["box"]
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "box").resolved
    assert (resolved.host, resolved.port, resolved.user) == ("box", 22, "=alice")
    assert _ssh_values(cfg, "user") == ["=alice"]
    cfg.write_text('Host box\n  User"x"\n')
    with pytest.raises(ConfigError, match="line 2"):
        options.prepare(ep, "box")


def test_a_host_line_s_words_are_patterns_and_a_comma_is_a_letter(tmp_path: Path) -> None:
    """ssh takes each word of a ``Host`` line for one pattern, a comma in it a character
    like any other: ``Host a,box`` applies to neither ``a`` nor ``box`` (asyncssh, and the
    pre-flight's walk, read it as the list ``a``, ``box``), while ``Match host a,box`` is a
    comma-separated list. The same config, read by ssh -G and by the pre-flight, gives
    ``box`` the same values."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host a,box\n  User fromhost\n  Port 1111\n"
        "Host other box,\n  Port 2222\n"
        "Match host a,box\n  HostKeyAlias frommatch\n"
        "Host box*\n  User starred\n"
    )
    for option, key in (("User", "user"), ("HostKeyAlias", "hostkeyalias")):
        assert _our_values(cfg, option) == _ssh_values(cfg, key)
    assert _ssh_values(cfg, "user") == ["starred"]
    assert _ssh_values(cfg, "port") == ["22"]
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "box").resolved
    assert (resolved.user, resolved.port) == ("starred", 22)
    # The walk's IgnoreUnknown: the first of a block that applies to every host is the
    # one ssh goes by; ``Host *,x`` is not such a block (it applies to names ending ,x).
    cfg.write_text("Host *,x\n  IgnoreUnknown Foo\nHost *\n  IgnoreUnknown Bar\n  Bar yes\n")
    assert _ssh("-F", str(cfg), "-G", "box").returncode == 0
    assert SSHPool().preflight(ep, "box") is None


def test_an_empty_host_pattern_is_refused_as_ssh_refuses_it(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text('Host box ""\n  Port 1\n')
    assert _ssh_values(cfg, "port") is None
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    with pytest.raises(ConfigError, match="line 1: an empty Host pattern"):
        options.prepare(ep, "box")


@pytest.mark.parametrize(
    "criteria",
    [
        'exec "test %h = box" host=box,other user "*" # a comment',
        '!host x originalhost "b?x"',
        'exec "test a\\b = a\\b"',  # a backslash before a letter: kept by both readings
    ],
)
def test_a_match_line_both_ssh_readings_agree_on_is_read_as_ssh_reads_it(
    criteria: str, tmp_path: Path
) -> None:
    """A Match line written in what OpenSSH 9.2's splitter (strdelim) and 9.9's (argv_split,
    which remote-sync follows) read alike applies as ssh -G says."""
    cfg = tmp_path / "config"
    cfg.write_text(f"Match {criteria}\n  Port 1\n")
    assert _our_values(cfg, "Port") == _ssh_values(cfg, "port") == ["1"]


@pytest.mark.parametrize(
    "criteria",
    [
        "exec 'test 1 = 1'",
        'exec "test \\"a b\\" = \\"a b\\""',
        "exec test\\ 1\\ =\\ 1",  # the argument has an = of its own: not cut there
        "exec x=1",
    ],
)
def test_a_match_line_is_split_as_openssh_9_9_splits_it(criteria: str, tmp_path: Path) -> None:
    """OpenSSH 9.9 splits a Match line's criteria as every other line (argv_split: single
    quotes, and a backslash escaping a quote, a backslash or a blank); up to 9.8 it split
    them with strdelim (double quotes only, every backslash kept), and refuses these lines
    ("Bad Match condition"), as the 9.2 here does. And 9.9 takes the word after a
    criterion whole, ``=`` and all, where asyncssh cut it there (refusing the line).
    remote-sync follows 9.9 (the README says so): the commands are ``test 1 = 1``,
    ``test "a b" = "a b"`` and ``x=1``, which succeed."""
    cfg = tmp_path / "config"
    cfg.write_text(f"Match {criteria}\n  Port 1\n")
    assert _our_values(cfg, "Port") == ["1"]
    assert _ssh_values(cfg, "port") is None  # ssh 9.2: "Bad Match condition"


@pytest.mark.parametrize(
    "config",
    [
        'Host box\n  User ""\n',
        "Host other\n  User ''\n",  # a block that does not apply: ssh refuses it there too
        'Host box\n  HostKeyAlias "" # a comment\n',
        'Host *\n  IdentityFile ""\n',
    ],
)
def test_an_empty_value_is_refused_as_ssh_refuses_it(config: str, tmp_path: Path) -> None:
    """ssh refuses an empty value ("Missing argument") on any line, in a block that applies
    or not; asyncssh took ``User ""`` and went on to log in as no one."""
    cfg = tmp_path / "config"
    cfg.write_text(config)
    assert _ssh("-F", str(cfg), "-G", "box").returncode != 0
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    error = SSHPool().preflight(ep, "box")
    assert isinstance(error, ConfigError)
    assert "line 2" in str(error) and "empty value" in str(error) and str(cfg) in str(error)


def test_a_value_ssh_takes_empty_is_taken(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    # A keyword IgnoreUnknown names is no keyword of ssh's: empty or not, it is skipped.
    cfg.write_text('IgnoreUnknown Foo\nHost other\n  ProxyJump ""\n  Protocol ""\n  Foo ""\n')
    assert _ssh("-F", str(cfg), "-G", "box").returncode == 0
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert SSHPool().preflight(ep, "box") is None


def test_a_user_name_the_connection_cannot_send_is_refused_with_its_line(
    tmp_path: Path,
) -> None:
    """ssh takes and sends a User with a tab (``User "a<TAB>b"``); asyncssh's connection
    options refuse it (SASLprep), and the pre-flight passed it, the connection then failing
    with neither file nor line. It is refused as that line's configuration error."""
    cfg = tmp_path / "config"
    cfg.write_text('Host other\n  User "x\ty"\nHost box\n  User "a\tb"\n  User c\n')
    assert _ssh_values(cfg, "user") == ["a\tb"]
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    error = SSHPool().preflight(ep, "box")
    assert isinstance(error, ConfigError)
    assert "line 4" in str(error) and "'a\\tb'" in str(error) and str(cfg) in str(error)


# --- Include and Match lines ssh reads otherwise -----------------------------------------


@pytest.mark.parametrize(
    "pattern",
    ["conf.d/*", "conf.d/*.conf", "conf.d/?box.swp", "conf.d/[.]box.swp", "*/box.conf",
     "conf.d/.*", "conf.d/.box.swp", ".hidden/*"],
)  # fmt: skip
def test_an_include_glob_skips_dot_files_as_ssh_s_glob_does(pattern: str, tmp_path: Path) -> None:
    """ssh expands an Include with glob(3), where a wildcard (``*``, ``?``, ``[.]``) does not
    match a name starting with ``.``: ``Include conf.d/*`` skips an editor's ``.box.swp``
    and ``.#box.conf``, and ``*/`` a hidden directory; a pattern spelling the ``.`` out reads
    them. asyncssh's Path.glob matched them, and the swap file's Port (first, sorted) won.
    The walk that checks every file (whose unknown option ssh would refuse) reads the same
    files: none where ssh reads none."""
    conf_d, hidden = tmp_path / "conf.d", tmp_path / ".hidden"
    conf_d.mkdir()
    hidden.mkdir()
    (conf_d / ".box.swp").write_text("Host box\n  Port 2201\n  SwapFileJunk yes\n")
    (conf_d / ".#box.conf").write_text("Host box\n  Port 2202\n")
    (conf_d / "box.conf").write_text("Host box\n  Port 2203\n")
    (hidden / "box.conf").write_text("Host box\n  Port 2204\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {tmp_path}/{pattern}\nHost box\n  Port 2299\n")
    by_ssh = _ssh_values(cfg, "port")
    if by_ssh is None:  # ssh refused the swap file's option: so must we
        assert _our_values(cfg, "Port") is not None  # asyncssh skips unknown options
        ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
        assert "swapfilejunk" in str(SSHPool().preflight(ep, "box"))
        return
    assert [int(port) for port in by_ssh] == _resolved_ports(cfg), pattern
    assert by_ssh[0] in {
        "conf.d/*": "2203", "conf.d/.*": "2202", "*/box.conf": "2203", ".hidden/*": "2204",
    }.get(pattern, by_ssh[0])  # fmt: skip


def _resolved_ports(cfg: Path) -> list[int]:
    """The Port the pool's pre-flight and lookup give ``box`` under ``cfg`` (a list, as
    :func:`_ssh_values` gives ssh's), the pre-flight finding nothing to refuse."""
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert SSHPool().preflight(ep, "box") is None
    return [options.prepare(ep, "box").resolved.port]


@pytest.mark.parametrize(
    "config",
    [
        'Include ""\n',
        "Include ''\n",
        'Host other\n  Include ""\n',  # a block that does not apply: ssh refuses it there too
        'Include /dev/null ""\n',
    ],
)
def test_an_empty_include_is_refused_as_ssh_refuses_it(config: str, tmp_path: Path) -> None:
    """ssh refuses an Include with an empty path ("keyword include empty argument") in any
    block; asyncssh read nothing for it, and the host went on as if the line were not there."""
    cfg = tmp_path / "config"
    cfg.write_text(config + "Host box\n  Port 2300\n")
    assert _ssh("-F", str(cfg), "-G", "box").returncode != 0
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    error = SSHPool().preflight(ep, "box")
    assert isinstance(error, ConfigError), error
    line = config.count("\n")
    assert f"line {line}: Include" in error.message and "empty" in error.message
    assert (error.host, error.path) == ("box", str(cfg)) and "Include" in (error.hint or "")


@pytest.mark.parametrize(
    "criteria",
    ['exec ""', '!exec ""', 'host box exec ""', 'exec "" host box', 'host ""',
     'user ""', 'originalhost ""', 'localuser ""', 'exec="" ', "host=", 'host "#box"',
     'exec "#true"', '"" host box', '"#x"'],
)  # fmt: skip
@pytest.mark.parametrize("block", ["", "Host other\n  "])
def test_a_match_criterion_without_argument_is_refused_as_ssh_refuses_it(
    criteria: str, block: str, tmp_path: Path
) -> None:
    """ssh refuses a Match criterion whose argument is empty or starts with ``#`` ("Missing
    Match criteria for exec"), wherever the line stands, before it evaluates anything;
    asyncssh ran ``Match exec ""`` (an empty command, which succeeds) and applied its
    block, or matched a ``host ""`` pattern. Refused in an Include'd file too, under a
    block that does not apply, which asyncssh never reads. (``exec ''``, empty as OpenSSH
    9.9 splits a Match line, as this reading does, is the command ``''`` to 9.2's
    splitter, which takes a single quote for a letter: not compared here.)"""
    cfg = tmp_path / "config"
    cfg.write_text(f"{block}Match {criteria}\n  Port 2300\n")
    assert _ssh("-F", str(cfg), "-G", "box").returncode != 0
    included = tmp_path / "outer"
    included.write_text(f"Host other\n  Include {cfg}\n")
    for path in (cfg, included):
        ep = Endpoint(address="box", ssh_config=(str(path),), known_hosts=str(cfg))
        error = SSHPool().preflight(ep, "box")
        assert isinstance(error, ConfigError), (path, error)
        assert f"line {block.count(chr(10)) + 1}: Match" in error.message, error.message
        said = "attributes required" if criteria.startswith('"') else "Missing Match criteria"
        assert said in error.message and error.path == str(cfg)


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["host", "!host", "user", "exec", "originalhost", "box", "true", '""',
                         '"#x"']),
        min_size=1,
        max_size=5,
    )
)  # fmt: skip
def test_a_match_line_is_refused_where_ssh_refuses_it(
    words: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Criteria and arguments in any order (only what OpenSSH 9.2 and 9.9 split alike):
    ssh refuses the line (an argument missing, empty or starting with ``#``, an empty
    criterion, or a word it takes for an unknown criterion) exactly where the pre-flight
    refuses it. (An empty criterion after the first, which 9.2 takes for the line's end and
    9.9 refuses, is refused here: not compared.)"""
    assume(all(word != '""' for word in words[2::2]))
    cfg = tmp_path_factory.mktemp("match") / "config"
    cfg.write_text(f"Host other\n  Port 1\nMatch {' '.join(words)}\n  Port 2300\n")
    by_ssh = _ssh("-F", str(cfg), "-G", "box").returncode == 0
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert (SSHPool().preflight(ep, "box") is None) == by_ssh, words


def test_a_match_criterion_with_its_argument_is_taken(tmp_path: Path) -> None:
    """What ssh takes: an argument after ``=`` or a blank, a comment after the criteria."""
    cfg = tmp_path / "config"
    cfg.write_text("Match host=box exec=true originalhost box  # a comment\n  Port 2300\n")
    assert _ssh_values(cfg, "port") == ["2300"]
    assert _resolved_ports(cfg) == [2300]


# --- algorithm names asyncssh does not support --------------------------------------------


def _algorithms_config(fleet: SSHFleet, tmp_path: Path) -> Path:
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host h0\n  Ciphers aes128-gcm@openssh.com,nope-cipher@example.com\n"
        "  KexAlgorithms +sntrup761x25519-sha512@openssh.com,curve25519-sha256\n"
        "  MACs -nope-mac@example.com\n"  # removing what is not there loses nothing
        f"Include {fleet.ssh_config}\n"
    )
    return cfg


async def test_algorithm_names_asyncssh_leaves_out_are_said(one: SSHFleet, tmp_path: Path) -> None:
    """asyncssh left out, without a word, the names of a list it does not support while
    others remained. The pre-flight names them, with the option and the file and line that
    set it, and the host is reached."""
    cfg = _algorithms_config(one, tmp_path)
    ep = Endpoint(address="h0", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert pool.preflight(ep, "h0") is None
        ciphers, kex = pool.config_warnings(ep)
        assert await run_command(pool, ep, ["echo", "ok"], host="h0") == b"ok\n"
    assert (ciphers.host, ciphers.path, kex.path) == ("h0", str(cfg), str(cfg))
    assert ciphers.message == (
        "ssh_config line 2: Ciphers names cipher algorithm remote-sync's SSH library "
        "(asyncssh) does not support, left out: nope-cipher@example.com"
    )
    assert kex.message.startswith("ssh_config line 3: KexAlgorithms names key exchange ")
    assert kex.message.endswith("left out: sntrup761x25519-sha512@openssh.com")


def _two_names_inventory(one: SSHFleet, tmp_path: Path) -> tuple[Path, Path]:
    """The algorithms ssh_config, and an inventory naming h0 twice ("h0", "second") with it."""
    from synchelp import make_openclaw_tree, write_inventory

    cfg = _algorithms_config(one, tmp_path)
    make_openclaw_tree(one, "h0", agents=1, sessions=1, lines=2)
    inv = write_inventory(one, tmp_path / "inventory.toml", ["h0", "h0"])
    text = inv.read_text().replace(str(one.ssh_config), str(cfg))
    inv.write_text(text.replace('name = "h0"', 'name = "second"', 1))
    return cfg, inv


def test_a_sync_says_left_out_algorithm_names_once_per_host(
    one: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a warning event for each host that reads that ssh_config, and the hosts sync."""
    from synchelp import run_cli

    cfg, inv = _two_names_inventory(one, tmp_path)
    code, events = run_cli(
        ["sync", "--json", "--inventory", str(inv), "--dest", str(tmp_path / "m")], capsys
    )
    assert code == 0
    said = [
        (e.host, e.message.split(":")[0], e.path)  # type: ignore[attr-defined]
        for e in events
        if type(e).__name__ == "WarningEvent" and e.kind == "ssh_config"  # type: ignore[attr-defined]
    ]
    assert sorted(said) == sorted(
        (host, f"ssh_config line {line}", str(cfg)) for host in ("h0", "second") for line in (2, 3)
    )


def test_names_the_system_wide_file_sets_are_logged_not_warned(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fedora's and RHEL's /etc/ssh/ssh_config Includes a crypto-policies file that names
    sntrup761x25519-sha512@openssh.com, which asyncssh lacks: once that file was read,
    every host of every sync warned, asking to edit a file root keeps, generated. A list
    the system-wide file (or a file it Includes) sets is logged at debug; the same line in
    the user's own file is still a warning."""
    line = "KexAlgorithms curve25519-sha256,sntrup761x25519-sha512@openssh.com\n"
    system = Path(sshconfig.SYSTEM_CONFIG)
    (system.parent / "policy.config").write_text(line)
    system.write_text("Include policy.config\n")
    user = home / ".ssh" / "config"
    user.write_text("Host box\n  HostName 127.0.0.1\n")
    ep = Endpoint(address="box", known_hosts=str(user))
    pool = SSHPool()
    with caplog.at_level(logging.DEBUG, logger=options.__name__):
        assert pool.preflight(ep, "box") is None
    assert pool.config_warnings(ep) == ()
    assert "left out: sntrup761x25519-sha512@openssh.com" in caplog.text
    user.write_text("Host box\n  HostName 127.0.0.1\n  " + line)
    pool = SSHPool()
    assert pool.preflight(ep, "box") is None
    (said,) = pool.config_warnings(ep)
    assert (said.host, said.path) == ("box", str(user))
    assert said.message.startswith("ssh_config line 3: KexAlgorithms names key exchange ")


def _warning_lines(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    """The warning events among JSON lines, decoded, in order of host and message."""
    decoded = [msgspec.json.decode(line) for line in lines]
    warnings = [line for line in decoded if line.get("type") == "warning"]
    return sorted(warnings, key=lambda e: (e["host"], e["message"]))


def test_a_remote_listing_and_show_say_them_as_a_sync_does(
    one: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sessions list --remote`` and ``sessions show --remote`` said nothing of them (no
    pre-flight ran). They say each once per host, as the same warning events as ``sync
    --json`` with --json, and as sync prints them without it (on stderr); the rows and the
    messages are there as before."""
    from synchelp import run_cli

    _, inv = _two_names_inventory(one, tmp_path)
    code, events = run_cli(
        ["sync", "--json", "--inventory", str(inv), "--dest", str(tmp_path / "m")], capsys
    )
    assert code == 0
    by_sync = _warning_lines(msgspec.json.encode(e) for e in events if isinstance(e, WarningEvent))
    assert len(by_sync) == 4
    code = main(["sessions", "list", "--remote", "--json", "-I", str(inv)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert _warning_lines(out.out.encode().splitlines()) == by_sync
    rows = [row for row in map(msgspec.json.decode, out.out.splitlines()) if "type" not in row]
    assert sorted(row["host"] for row in rows) == ["h0", "second"]
    code = main(["sessions", "list", "--remote", "-I", str(inv)])
    out = capsys.readouterr()
    assert code == 0, out.err
    said = [line for line in out.err.splitlines() if line.startswith("warning ")]
    assert sorted(said) == sorted(
        f"warning {e['host']}: {e['path']}: {e['message']}" for e in by_sync
    )
    show = ["sessions", "show", "--remote", "-I", str(inv), "--", "h0", rows[0]["path"]]
    code = main([*show[:2], "--json", *show[2:]])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert _warning_lines(out.out.encode().splitlines()) == [
        e for e in by_sync if e["host"] == "h0"
    ]
    assert len(out.out.splitlines()) > 2  # the messages too
    code = main(show)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len([line for line in out.err.splitlines() if line.startswith("warning h0: ")]) == 2


# --- PubkeyAcceptedAlgorithms --------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepted", "reached"),
    [
        ("rsa-sha2-512,rsa-sha2-256", False),
        ("-ssh-ed25519", False),
        ("ssh-ed25519-cert-v01@openssh.com", True),  # a certificate type stands for its key's
        ("ecdsa-sha2-nistp256,ssh-ed25519", True),
        ("+ssh-dss", True),
    ],
)
async def test_pubkey_accepted_algorithms_is_applied_as_ssh_applies_it(
    accepted: str, reached: bool, one: SSHFleet, tmp_path: Path
) -> None:
    """ssh offers only the keys whose type PubkeyAcceptedAlgorithms lists; asyncssh read
    the option not at all, and logged in with an ed25519 key the list leaves out. (The
    certificate case is ours: ssh would not offer the plain key.)"""
    h = one.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {one.user}\n"
        f"  IdentityFile {one.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {one.known_hosts}\n  PubkeyAcceptedAlgorithms {accepted}\n"
    )
    if "cert" not in accepted:
        by_ssh = _ssh("-F", str(cfg), "-o", "BatchMode=yes", "box", "true")
        assert (by_ssh.returncode == 0) == reached, by_ssh.stderr
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert pool.preflight(ep, "box") is None
        if reached:
            assert await run_command(pool, ep, ["echo", "ok"], host="box") == b"ok\n"
        else:
            with pytest.raises(AuthenticationError):
                await run_command(pool, ep, ["true"], host="box")


# --- HashKnownHosts ------------------------------------------------------------------------


async def test_a_key_recorded_under_hash_known_hosts_is_hashed_as_ssh_hashes_it(
    one: SSHFleet, home: Path, tmp_path: Path
) -> None:
    """Debian's /etc/ssh/ssh_config says "HashKnownHosts yes" for every host: ssh writes a
    first key (accept-new) under ``|1|salt|hash``, not under the host's name; we wrote the
    name. The hashed line is found by ssh-keygen -F and by a real ssh that refuses unknown
    keys, and by our next connection (which records nothing more). The user's file is read
    first: its "HashKnownHosts no" wins over the system's yes, as ssh's first value does."""
    h = one.host("h0")
    mine = tmp_path / "known_hosts"
    user_config = home / ".ssh" / "config"

    def write_config(extra: str) -> None:
        user_config.write_text(
            f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {one.user}\n"
            f"  IdentityFile {one.client_key}\n  IdentitiesOnly yes\n{extra}"
            f"  UserKnownHostsFile {mine}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking accept-new\n"
        )

    Path(sshconfig.SYSTEM_CONFIG).write_text(
        "Host *\n    SendEnv LANG LC_*\n    HashKnownHosts yes\n    GSSAPIAuthentication yes\n"
    )
    write_config("")
    ep = Endpoint(address="box")
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "new"], host="box") == b"new\n"
    (line,) = mine.read_text().splitlines()
    name, key_type, _key = line.split(" ")
    assert name.startswith("|1|") and "127.0.0.1" not in line, line
    _, _, salt, digest = name.split("|")
    assert (len(base64.b64decode(salt)), len(base64.b64decode(digest))) == (20, 20)
    keygen = shutil.which("ssh-keygen")
    assert keygen is not None
    found = subprocess.run(
        [keygen, "-F", f"[127.0.0.1]:{h.port}", "-f", str(mine)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert found.returncode == 0 and key_type in found.stdout, found
    # -F: the user's file alone, which names the known_hosts; -o wins over its accept-new.
    by_ssh = _ssh(
        "-F", str(user_config), "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "box", "echo", "ssh",
    )  # fmt: skip
    assert by_ssh.returncode == 0 and by_ssh.stdout == "ssh\n", by_ssh.stderr
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "again"], host="box") == b"again\n"
    assert mine.read_text().splitlines() == [line]
    mine.unlink()
    write_config("  HashKnownHosts no\n")
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "plain"], host="box") == b"plain\n"
    assert mine.read_text().startswith(f"[127.0.0.1]:{h.port} {key_type} ")


def test_a_hashed_host_name_is_the_one_ssh_keygen_writes(tmp_path: Path) -> None:
    """The same name and salt give ssh-keygen -H's hash (``[host]:port`` for another port)."""
    keygen = shutil.which("ssh-keygen")
    assert keygen is not None
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known = tmp_path / "known_hosts"
    known.write_text(f"[box.example]:2222 {key}\n")
    subprocess.run([keygen, "-H", "-f", str(known)], capture_output=True, check=True, timeout=30)
    name = known.read_text().split(" ")[0]
    salt = base64.b64decode(name.split("|")[2])
    assert hostkeys.hashed_host_name("[box.example]:2222", salt) == name


# --- RemoteCommand ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["tmux new -A -s main", "tmux new -A -s %k-%j"])
async def test_a_remote_command_is_said_not_run_and_no_terminal_is_asked_for(
    command: str, one: SSHFleet, tmp_path: Path
) -> None:
    """ssh refuses a command line for a host with a RemoteCommand; asyncssh took it without
    a word (our commands replace it), and stopped the host on a token of it that ssh expands
    but asyncssh does not know (%k, %j). It is said once, with its file and line, and never
    run: our commands run as given, with no pseudo-terminal though RequestTTY says force
    (bytes as sent, no \\r added). A "RemoteCommand none" read first says nothing."""
    h = one.host("h0")
    cfg = tmp_path / "config"
    body = (
        f"  HostName 127.0.0.1\n  Port {h.port}\n  User {one.user}\n"
        f"  IdentityFile {one.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {one.known_hosts}\n  RequestTTY force\n  RemoteCommand {command}\n"
    )
    cfg.write_text(f"Host box\n{body}")
    by_ssh = _ssh("-F", str(cfg), "-o", "BatchMode=yes", "box", "true")
    assert by_ssh.returncode != 0
    assert "Cannot execute command-line and remote command" in by_ssh.stderr
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert pool.preflight(ep, "box") is None
        (said,) = pool.config_warnings(ep)
        assert await run_command(pool, ep, ["printf", "a\\nb"], host="box") == b"a\nb"
        probe = "if [ -t 0 ] || [ -t 1 ]; then echo tty; else echo none; fi"
        assert await run_command(pool, ep, ["sh", "-c", probe], host="box") == b"none\n"
    assert (said.host, said.path) == ("box", str(cfg))
    assert said.message.startswith("ssh_config line 9: RemoteCommand is not run: ")
    assert "Cannot execute command-line and remote command" in said.hint
    cfg.write_text(f"Host box\n  RemoteCommand none\nHost box\n{body}")
    async with SSHPool() as pool:
        assert pool.preflight(ep, "box") is None
        assert pool.config_warnings(ep) == ()


def test_a_shared_jump_host_s_warning_is_said_once_per_target(home: Path, tmp_path: Path) -> None:
    """A ``Host *`` line is read for a target and for its jump host alike. The jump host,
    looked up once for the first target, kept that target's name in its warning, so the
    second target said the same warning twice (its own, and the jump host's)."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host *\n  Ciphers aes128-gcm@openssh.com,nope-cipher@example.com\n"
        "Host t1 t2\n  HostName 127.0.0.1\n  ProxyJump jump\n"
        "Host jump\n  HostName 127.0.0.1\n"
    )
    pool = SSHPool()
    said = {}
    for name in ("t1", "t2"):
        ep = Endpoint(address=name, ssh_config=(str(cfg),), known_hosts=str(cfg))
        assert pool.preflight(ep, name) is None
        said[name] = [w.message for w in pool.config_warnings(ep)]
    assert said["t1"] == said["t2"]
    (message,) = said["t2"]
    assert message.endswith("left out: nope-cipher@example.com")


# --- the host name's case -----------------------------------------------------------------


def test_a_host_name_with_capitals_is_looked_up_as_ssh_looks_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh lowercases the host name once it has read its config (``ssh -G PI-K`` prints
    ``hostname pi-k``), compares ``Match host`` and ``originalhost`` patterns with a name
    ignoring case, and gives its final pass (``Match final``) the lowercased name as %h;
    its first pass has the name as written, and ``Host`` patterns are compared with the
    name as typed, case and all. The same config, read by ssh -G and by the pre-flight,
    gives the same HostName, User, Port and ServerAliveCountMax, and its Match exec
    commands write the same lines. asyncssh kept the capitals and compared with them."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host PI-K\n  HostName PI-K.Example\n  HostKeyAlias Key-PI\n"
        "Host pi-k\n  Port 1\n"  # not for PI-K: Host patterns are case-sensitive
        "Match host pi-k.example\n  User lowered\n"
        "Match originalhost pi-k\n  ServerAliveCountMax 7\n"
        'Match exec "echo first %h %n %k >>$RS_OUT"\n'
        'Match final exec "echo final %h %n %k >>$RS_OUT"\n'
        "Match final host PI-K.EXAMPLE\n  Port 2222\n"
    )
    by_ssh, by_us = tmp_path / "ssh.txt", tmp_path / "us.txt"
    done = _ssh("-F", str(cfg), "-G", "PI-K", env={**os.environ, "RS_OUT": str(by_ssh)})
    assert done.returncode == 0, done.stderr
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    monkeypatch.setenv("RS_OUT", str(by_us))
    ep = Endpoint(address="PI-K", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "PI-K").resolved
    assert resolved.parsed is not None
    ours = (
        resolved.host,
        resolved.user,
        str(resolved.port),
        str(resolved.parsed.config.get("ServerAliveCountMax")),
        resolved.keys.alias,
    )
    keys = ("hostname", "user", "port", "serveralivecountmax", "hostkeyalias")
    assert ours == tuple(said[key] for key in keys)
    assert ours == ("pi-k.example", "lowered", "2222", "7", "key-pi")
    assert by_us.read_text() == by_ssh.read_text()
    assert "final pi-k.example PI-K Key-PI\n" in by_us.read_text()  # the alias: later


def test_the_files_and_proxy_command_of_a_host_name_with_capitals_are_ssh_s(
    tmp_path: Path,
) -> None:
    """ssh expands %h in IdentityFile, CertificateFile and ProxyCommand (and %C, hashed from
    it) with the host name lowercased, as it has it once its config is read; asyncssh used
    the HostName as written, and looked for ``id_Real.EXAMPLE`` where ssh loads
    ``id_real.example``. %n stays the name as typed. ssh -v, its ProxyCommand failing at
    once, says which files it would load and the command it runs."""
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host MyHost\n  HostName Real.EXAMPLE\n  IdentityFile {tmp_path}/id_%h_%C\n"
        f"  CertificateFile {tmp_path}/cert_%h_%n\n  ProxyCommand echo %h %n %p; exit 1\n"
    )
    done = _ssh("-v", "-F", str(cfg), "-o", "BatchMode=yes", "MyHost", "true")
    said = done.stderr.splitlines()
    proxy = [line.split(": exec ", 1)[1] for line in said if "Executing proxy command" in line]
    files = [line.split(" file ", 1)[1].rsplit(" type ", 1)[0] for line in said if " file " in line]
    ep = Endpoint(address="MyHost", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "MyHost").resolved
    assert resolved.parsed is not None
    assert (
        [resolved.parsed.config.get("ProxyCommand")]
        == proxy
        == ["echo real.example MyHost 22; exit 1"]
    )
    assert [*resolved.identities, *resolved.certificates] == files
    assert files[1] == f"{tmp_path}/cert_real.example_MyHost"


#: Every token ssh (OpenSSH 9.2) expands in IdentityFile, CertificateFile and
#: UserKnownHostsFile (ssh.c's default client expansion), in one path.
_PATH_TOKENS = "%C_%L_%d_%h_%i_%k_%l_%n_%p_%r_%u_%%"


def test_the_tokens_of_key_and_known_hosts_paths_are_ssh_s(tmp_path: Path) -> None:
    """ssh expands %C %L %d %h %i %k %l %n %p %r %u and %% in IdentityFile, CertificateFile
    and UserKnownHostsFile, and %k (with %h %n %p %r) in ProxyCommand; asyncssh stopped the
    host on %k in the first two and in ProxyCommand ("Invalid token expansion"), and the
    known_hosts lookup refused %C and %i. GlobalKnownHostsFile has ``~`` expanded alone, as
    in ssh: a ``%`` there is a letter of the file's name (the lookup expanded tokens). ssh
    -G names the known_hosts files, ssh -v (its ProxyCommand failing) the keys and the
    command."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host MyBox\n  HostName Real.EXAMPLE\n  HostKeyAlias Ali\n  User someone\n  Port 2222\n"
        "  ProxyCommand false %k %h %n %p %r\n"
        f"  IdentityFile {tmp_path}/id_{_PATH_TOKENS}\n"
        f"  CertificateFile {tmp_path}/cert_{_PATH_TOKENS}\n"
        f"  UserKnownHostsFile {tmp_path}/known_{_PATH_TOKENS} ${{HOME}}/known\n"
        f"  GlobalKnownHostsFile {tmp_path}/global_%h_%C ~/global\n"
    )
    said = _ssh("-v", "-F", str(cfg), "-o", "BatchMode=yes", "MyBox", "true").stderr.splitlines()
    keys = [line.split(" file ", 1)[1].rsplit(" type ", 1)[0] for line in said if " file " in line]
    proxy = [line.split(": exec ", 1)[1] for line in said if "Executing proxy command" in line]
    printed = _ssh("-F", str(cfg), "-G", "MyBox").stdout.splitlines()
    user_files, global_files = (
        next(line.split()[1:] for line in printed if line.startswith(f"{key} "))
        for key in ("userknownhostsfile", "globalknownhostsfile")
    )
    ep = Endpoint(address="MyBox", ssh_config=(str(cfg),))
    resolved = options.prepare(ep, "MyBox").resolved
    assert resolved.parsed is not None
    assert [resolved.parsed.config.get("ProxyCommand")] == proxy
    assert proxy == ["false ali real.example MyBox 2222 someone"]
    identity, certificate = (resolved.identities[0], resolved.certificates[0])
    assert [identity, certificate] == keys
    assert list(resolved.keys.user) == user_files
    assert list(resolved.keys.system) == [os.path.expanduser(path) for path in global_files]
    assert global_files[0] == f"{tmp_path}/global_%h_%C"
    hashed = f"{socket.gethostname()}real.example2222someone"
    assert f"_{hashlib.sha1(hashed.encode()).hexdigest()}_" in identity
    assert f"_ali_{socket.gethostname()}_MyBox_2222_someone_" in user_files[0]


def test_j_in_key_and_known_hosts_paths_is_the_jump_host(tmp_path: Path) -> None:
    """OpenSSH 9.6 and later expand %j, the last ProxyJump hop's host name, in IdentityFile,
    CertificateFile and UserKnownHostsFile as in Match exec (9.2 knows it nowhere, and
    stops on it); asyncssh stopped on it, and so did the known_hosts lookup. Empty without a
    ProxyJump, as in ssh."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box other\n  HostName 127.0.0.1\nHost box\n  ProxyJump admin@bastion:2222\n"
        f"Host *\n  IdentityFile {tmp_path}/id_%j\n  CertificateFile {tmp_path}/cert_%j\n"
        f"  UserKnownHostsFile {tmp_path}/known_%j\n"
    )
    for name, jump in (("box", "bastion"), ("other", "")):
        ep = Endpoint(address=name, ssh_config=(str(cfg),))
        resolved = options.prepare(ep, name).resolved
        found = (*resolved.identities, *resolved.certificates, *resolved.keys.user)
        assert found == tuple(f"{tmp_path}/{kind}_{jump}" for kind in ("id", "cert", "known"))


def _ssh_proxy_and_keys(cfg: Path, *options: str) -> tuple[list[str], list[str], str]:
    """What ``ssh -v -F cfg box`` says, its ProxyCommand failing at once: the commands it
    runs (without its ``exec``), the key and certificate files it would load, its stderr."""
    said = _ssh("-v", "-F", str(cfg), "-o", "BatchMode=yes", *options, "box", "true").stderr
    lines = said.splitlines()
    proxy = [line.split(": exec ", 1)[1] for line in lines if "Executing proxy command" in line]
    files = [
        line.split(" file ", 1)[1].rsplit(" type ", 1)[0] for line in lines if " file " in line
    ]
    return proxy, files, said


#: Tokens of IdentityFile and Match exec that ssh does not expand in a ProxyCommand, and a
#: ``%`` at the end ("invalid format").
_NOT_PROXY_TOKENS = ["%C", "%d", "%i", "%j", "%L", "%l", "%u", "%T", "%"]


@pytest.mark.parametrize("token", _NOT_PROXY_TOKENS)
def test_a_proxy_command_token_ssh_does_not_expand_is_refused(token: str, tmp_path: Path) -> None:
    """ssh expands %h %k %n %p %r and %% alone in a ProxyCommand (sshconnect.c's
    expand_proxy_command, 9.2 as 9.9) and stops on any other before running it; every
    token of IdentityFile was expanded there (an unknown one refused without its line)."""
    cfg = tmp_path / "config"
    cfg.write_text(f"Host box\n  HostName 127.0.0.1\n  ProxyCommand echo %h {token}\n")
    proxy, _, said = _ssh_proxy_and_keys(cfg)
    assert proxy == [] and "percent_expand: failed" in said, said
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(cfg))
    # Named by its program alone: its arguments may hold a secret.
    assert problem.message.startswith("ssh_config line 3: ProxyCommand echo …: "), problem
    shown = "a '%' at the end" if token == "%" else token
    assert f"{shown} is no token ssh expands there" in problem.message, problem.message


def test_a_proxy_command_has_ssh_s_tokens_and_its_variables_left_to_it(tmp_path: Path) -> None:
    """%h %k %n %p %r and %% expanded as ssh expands them, and a ``${VAR}`` left for the
    command, as ssh leaves it (asyncssh expanded it, and stopped the host on an unset one)."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box\n  HostName 127.0.0.1\n  HostKeyAlias Ali\n  User someone\n"
        "  ProxyCommand false %h %k %n %p %r 100%% ${HOME} ${REMOTE_SYNC_UNSET_VARIABLE}\n"
    )
    proxy, _, said = _ssh_proxy_and_keys(cfg)
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    resolved = options.prepare(ep, "box").resolved
    assert resolved.parsed is not None
    assert [resolved.parsed.config.get("ProxyCommand")] == proxy, said
    assert proxy == [
        "false 127.0.0.1 ali box 22 someone 100% ${HOME} ${REMOTE_SYNC_UNSET_VARIABLE}"
    ]


def test_the_inventory_s_proxy_command_has_ssh_s_tokens(tmp_path: Path) -> None:
    """The inventory's proxy_command is expanded as ``ssh -o ProxyCommand=...`` expands it:
    %k and %n too (they were left as written), and any other token refused before any
    traffic, as ssh stops on it (it was left as written)."""
    cfg = tmp_path / "config"
    cfg.write_text("Host box\n  HostName 127.0.0.1\n  HostKeyAlias Ali\n  User someone\n")
    command = "false %h %k %n %p %r %%"
    proxy, _, _ = _ssh_proxy_and_keys(cfg, "-o", f"ProxyCommand={command}")
    ep = Endpoint(
        address="box", ssh_config=(str(cfg),), known_hosts=str(cfg), proxy_command=command
    )
    assert [options.prepare(ep, "box").options["proxy_command"]] == proxy
    assert proxy == ["false 127.0.0.1 ali box 22 someone %"]
    refused = dataclasses.replace(ep, proxy_command="false %h %j")
    _, _, said = _ssh_proxy_and_keys(cfg, "-o", "ProxyCommand=false %h %j")
    assert "unknown key %j" in said, said
    problem = SSHPool().preflight(refused, "box")
    assert isinstance(problem, ConfigError) and problem.host == "box", problem
    assert "%j is no token ssh expands there" in problem.message, problem.message


def test_tokens_are_expanded_once_every_file_is_read_as_ssh_expands_them(
    home: Path, tmp_path: Path
) -> None:
    """ssh expands the tokens of IdentityFile, CertificateFile and ProxyCommand once it has
    read all its files; asyncssh expanded them at the end of each file it read, an
    Include'd one too. So the HostName, User and HostKeyAlias that the system-wide file
    (read after ~/.ssh/config, as the pool passes them) sets did not reach the %h %r %k of
    the user's lines, and a ``%%`` that one file's expansion made ``%`` was expanded again by
    the next (``%%C`` became a hash, ``%%h`` the host). ``ssh -F`` reads one file: one that
    Includes the two, in the order ssh reads them without -F, is read as those two are
    (first value wins, tokens expanded once all is read)."""
    keys = tmp_path / "keys.conf"
    keys.write_text(
        f"Host box\n  IdentityFile {tmp_path}/id_%h_%r\n  CertificateFile {tmp_path}/cert_%k_%%C\n"
    )
    user = home / ".ssh" / "config"
    user.write_text(f"Include {keys}\nHost box\n  ProxyCommand false %h %k %r %%h\n")
    system = Path(sshconfig.SYSTEM_CONFIG)
    system.write_text("Host box\n  HostName Real.EXAMPLE\n  HostKeyAlias Ali\n  User someone\n")
    both = tmp_path / "both.conf"
    both.write_text(f"Include {user}\nInclude {system}\n")
    proxy, files, said = _ssh_proxy_and_keys(both)
    assert proxy == ["false real.example ali someone %h"], said
    assert files == [f"{tmp_path}/id_real.example_someone", f"{tmp_path}/cert_ali_%C"], said
    ep = Endpoint(address="box", known_hosts=str(user))
    resolved = options.prepare(ep, "box").resolved
    assert resolved.parsed is not None
    assert [resolved.parsed.config.get("ProxyCommand")] == proxy
    assert [*resolved.identities, *resolved.certificates] == files


def _localhost_known_hosts(one: SSHFleet, path: Path, written: str) -> None:
    """``path``: the key of ``one``'s host under ``written`` alone (a name, or a hash)."""
    key = one.host("h0").host_public_key
    path.write_text(f"{written} {key}\n")


async def test_a_host_key_is_found_under_the_lowercased_host_name_as_ssh_finds_it(
    one: SSHFleet, tmp_path: Path
) -> None:
    """The host ``LocalHost`` (an inventory address with capitals, or a HostName with them)
    is reached by ssh as ``localhost``, and its key looked up under that name: a plain
    known_hosts name is compared ignoring case, a hashed one is the hash of the lowercased
    name. asyncssh looked the key up under ``[LocalHost]:PORT`` as written, compared case
    and all, and refused a key ssh accepts ("host key is unknown"). Every case is run by
    ssh too: both connect, or both refuse."""
    h = one.host("h0")
    known = tmp_path / "known_hosts"
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName LOCALHOST\n  Port {h.port}\n  User {one.user}\n"
        f"  IdentityFile {one.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
    )
    direct = Endpoint(
        address="LocalHost",
        port=h.port,
        user=one.user,
        ssh_config=(),
        identity_files=(str(one.client_key),),
        known_hosts=str(known),
    )
    aliased = Endpoint(address="box", ssh_config=(str(cfg),))
    spellings = {
        f"[localhost]:{h.port}": True,
        f"[LocalHost]:{h.port}": True,
        hostkeys.hashed_host_name(f"[localhost]:{h.port}"): True,
        hostkeys.hashed_host_name(f"[LOCALHOST]:{h.port}"): False,
    }
    for written, found in spellings.items():
        _localhost_known_hosts(one, known, written)
        by_ssh = _ssh("-F", str(cfg), "-o", "BatchMode=yes", "box", "true")
        assert (by_ssh.returncode == 0) == found, (written, by_ssh.stderr)
        for ep in (direct, aliased):
            async with SSHPool() as pool:
                if found:
                    assert await run_command(pool, ep, ["echo", "hi"]) == b"hi\n", written
                else:
                    with pytest.raises(HostKeyError, match="unknown"):
                        await run_command(pool, ep, ["true"])


# --- ProxyCommand or ProxyJump: the one ssh takes ----------------------------------------


def _ssh_printed(cfg: Path, *options: str) -> dict[str, str]:
    """``ssh -G``'s options for ``box`` under ``cfg`` (of a repeated one, the last)."""
    printed = _ssh("-F", str(cfg), *options, "-G", "box").stdout.splitlines()
    return dict(line.split(" ", 1) for line in printed if " " in line)


@pytest.mark.parametrize(
    ("lines", "given"),
    [
        ("ProxyJump j1\n  ProxyCommand nc %d %h\n", None),
        ("ProxyCommand false %h\n  ProxyJump j1\n", None),
        ("ProxyJump none\n  ProxyCommand false %h\n", None),
        ("ProxyCommand none\n  ProxyJump j1\n", None),
        ("ProxyJump j1\n  ProxyCommand nc %d %h\n", "false %h %p"),
        ("ProxyCommand nc %d %h\n", "false %h %p"),
    ],
)
def test_the_first_of_proxy_command_and_proxy_jump_is_the_one_taken_as_in_ssh(
    lines: str, given: str | None, tmp_path: Path
) -> None:
    """ssh takes ProxyCommand and ProxyJump as one choice whose first value wins (readconf.c;
    ``ProxyJump none`` does not keep a later ProxyCommand out in 9.2, ``ProxyCommand none``
    keeps a ProxyJump out), and ``-o ProxyCommand=...``, as the inventory's proxy_command,
    comes before both. asyncssh took both: the pool opened the jump host where ssh runs the
    command, and refused a token (%d) of a command ssh never runs, failing the host. ``ssh
    -G`` shows the one it takes."""
    cfg = tmp_path / "config"
    cfg.write_text(f"Host box\n  HostName 127.0.0.1\n  {lines}Host j1\n  HostName 127.0.0.2\n")
    printed = _ssh_printed(cfg, *(("-o", f"ProxyCommand={given}") if given else ()))
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg), proxy_command=given)
    assert SSHPool().preflight(ep, "box") is None
    prepared = options.prepare(ep, "box")
    parsed = prepared.resolved.parsed
    assert parsed is not None
    configured = parsed.config.get("ProxyCommand")
    assert prepared.resolved.jumps == printed.get("proxyjump")
    assert ((given or configured) is not None) == ("proxycommand" in printed)
    if given:
        assert configured is None  # the inventory's alone runs
        assert prepared.options["proxy_command"] == "false 127.0.0.1 22"
    elif "proxycommand" in printed:
        proxy, _, said = _ssh_proxy_and_keys(cfg)
        assert [configured] == proxy, said


@pytest.mark.parametrize("separator", ["=", " = ", " = = ", "\t=\t", "==", " =", "= "])
def test_a_proxy_command_starts_after_the_blanks_and_equals_signs_as_in_ssh(
    separator: str, tmp_path: Path
) -> None:
    """ssh's ProxyCommand starts after every blank and ``=`` that follows the keyword
    (readconf.c: ``strspn(str, WHITESPACE "=")``), as ``ssh -v`` shows the command it runs;
    asyncssh kept the ``=``, and ``ProxyCommand=nc %h %p`` ran ``exec =nc ...``."""
    cfg = tmp_path / "config"
    cfg.write_text(f"Host box\n  HostName 127.0.0.1\n  ProxyCommand{separator}false %h %p\n")
    proxy, _, said = _ssh_proxy_and_keys(cfg)
    assert proxy == ["false 127.0.0.1 22"], said
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    parsed = options.prepare(ep, "box").resolved.parsed
    assert parsed is not None
    assert [parsed.config.get("ProxyCommand")] == proxy


@settings(max_examples=40, deadline=None)
@given(
    separator=st.text(" \t=", min_size=1, max_size=6),
    command=st.sampled_from(["false %h %p", "none", "NONE", "None"]),
)
def test_any_blanks_and_equals_signs_before_a_proxy_command_are_skipped(
    separator: str, command: str
) -> None:
    """Whatever run of blanks and ``=`` comes between the keyword and the command, the
    command is what follows it; ``none`` (in any case) is then no command, and keeps the
    ProxyJump below it out, as in ssh."""
    with tempfile.TemporaryDirectory() as directory:
        cfg = Path(directory) / "config"
        cfg.write_text(
            f"Host box\n  HostName 127.0.0.1\n  ProxyCommand{separator}{command}\n  ProxyJump j1\n"
        )
        ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
        resolved = options.prepare(ep, "box").resolved
    assert resolved.parsed is not None
    configured = resolved.parsed.config.get("ProxyCommand")
    assert resolved.jumps is None
    assert configured == (None if command.lower() == "none" else "false 127.0.0.1 22")


@pytest.mark.parametrize("given", [None, "false %h"])
def test_j_and_c_name_no_jump_host_when_a_proxy_command_is_taken(
    given: str | None, tmp_path: Path
) -> None:
    """With a ProxyCommand before the ProxyJump, or the inventory's proxy_command, ssh
    takes no jump host: %j is empty and %C is hashed without one (OpenSSH 9.6; 9.2 hashes
    no jump host at all, so its ``ssh -G`` UserKnownHostsFile is the reference). They were
    taken from the ProxyJump line ssh never follows."""
    cfg = tmp_path / "config"
    first = "" if given else "  ProxyCommand false %h\n"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n{first}  ProxyJump admin@bastion\n"
        f"  IdentityFile {tmp_path}/id_%j_%C\n  UserKnownHostsFile {tmp_path}/known_%C\n"
    )
    printed = _ssh_printed(cfg, *(("-o", f"ProxyCommand={given}") if given else ()))
    assert "proxyjump" not in printed
    known = printed["userknownhostsfile"]
    ep = Endpoint(address="box", ssh_config=(str(cfg),), proxy_command=given)
    resolved = options.prepare(ep, "box").resolved
    assert resolved.keys.user == (known,)
    connection_hash = known.rsplit("_", 1)[1]
    assert resolved.identities == (f"{tmp_path}/id__{connection_hash}",)
    assert resolved.jumps is None


# --- the patches of asyncssh's reader, each applied once ---------------------------------


#: The functions that patch asyncssh's ssh_config reader, in the order they are applied.
_PATCHES = (
    "_sort_config_includes",
    "_read_system_file_as_ssh_does",
    "_lowercase_host_as_ssh_does",
    "_expand_tokens_once_every_file_is_read",
    "_read_config_as_ssh_does",
)


def _fresh_asyncssh_config() -> Any:
    """A copy of asyncssh's config module as asyncssh ships it, none of the pool's patches
    applied (the imported one has them all)."""
    spec = importlib.util.spec_from_file_location(
        "asyncssh._remote_sync_fresh_config", asyncssh.config.__file__
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(module: Any, cfg: Path) -> Any:
    """``module``'s reading of ``cfg`` for the host ``box``."""
    return module.SSHClientConfig.load(None, [str(cfg)], False, False, False, "me", (), "box", ())


@pytest.mark.parametrize("order", [_PATCHES, _PATCHES[::-1]], ids=["forward", "reversed"])
def test_each_patch_of_asyncssh_s_reader_applies_once_whatever_the_order(
    order: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each patch checked a marker on the outermost wrapper of asyncssh's ``load``, which the
    next wrapper hid: called again, they wrapped again, and a second expansion made the
    ``%h`` of ``%%h`` the host. Applied twice, in either order, a reading is as once: ``%%h``
    is ``%h``, the paths are ssh's, the Include'd files sorted without dot files."""
    fresh = _fresh_asyncssh_config()
    monkeypatch.setattr(asyncssh, "config", fresh)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / ".box.swp").write_text("Host box\n  Port 2201\n")
    (conf_d / "b.conf").write_text("Host box\n  Port 2203\n")
    (conf_d / "a.conf").write_text("Host box\n  Port 2202\n")
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Include {conf_d}/*\nHost box\n  HostName Real.EXAMPLE\n"
        f"  CertificateFile {tmp_path}/cert_%%h\n  IdentityFile {tmp_path}/id_%h\n"
        "  ProxyCommand false %%h %h\n"
    )
    for name in (*order, *order, *order):
        getattr(configreader, name)()
    config = _load(fresh, cfg)
    assert config.get("CertificateFile") == [f"{tmp_path}/cert_%h"]
    assert config.get("IdentityFile") == [f"{tmp_path}/id_real.example"]
    assert config.get("ProxyCommand") == "false %h real.example"
    assert config.get("Port") == 2202


def test_tokens_are_expanded_by_asyncssh_where_the_lowercasing_patch_is_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expansion once every file is read takes its tokens from the lowercasing patch
    (%k, %j); without it (another asyncssh, where that patch leaves itself out), a
    ProxyCommand's expansion stopped on a bare KeyError. It is then not applied either,
    and asyncssh expands the tokens as it did."""
    fresh = _fresh_asyncssh_config()
    monkeypatch.setattr(asyncssh, "config", fresh)
    configreader._expand_tokens_once_every_file_is_read()
    cfg = tmp_path / "config"
    cfg.write_text("Host box\n  ProxyCommand nc %h %p\n")
    assert _load(fresh, cfg).get("ProxyCommand") == "nc box 22"


def test_path_glob_is_never_replaced_while_an_include_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Include's glob was ssh's through ``pathlib.Path.glob`` swapped for the time of the
    Include: any other thread of the process (an application embedding the library) got
    that non-recursive glob skipping dot files meanwhile. The Include is read as ssh reads
    it (sorted, no dot files) with ``Path.glob`` as Python has it throughout."""
    original = pathlib.Path.glob
    seen: list[bool] = []
    real = configreader.include_paths

    def watching(pattern: str) -> list[str]:
        seen.append(pathlib.Path.glob is original)
        return real(pattern)

    monkeypatch.setattr(configreader, "include_paths", watching)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / ".box.swp").write_text("Host box\n  Port 2201\n")
    (conf_d / "box.conf").write_text("Host box\n  Port 2202\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {conf_d}/*\nHost box\n  Port 2299\n")
    assert _resolved_ports(cfg) == [2202]
    assert seen and all(seen), seen


# --- a % at the end of a path ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        ("IdentityFile {d}/id%\n", "IdentityFile"),
        ("IdentityFile {d}/id\n  IdentityFile {d}/other%%%\n", "IdentityFile"),
        ("CertificateFile {d}/cert%\n", "CertificateFile"),
        ("UserKnownHostsFile {d}/known {d}/kh%\n", "UserKnownHostsFile"),
        ("IdentityAgent {d}/agent%\n", "IdentityAgent"),
        ("IdentityAgent {d}/agent\n  IdentityAgent {d}/agent%\n", None),  # not taken
        ("IdentityFile {d}/id_100%%\n", None),
    ],
)
def test_a_path_ending_in_a_lone_percent_is_refused_as_ssh_refuses_it(
    lines: str, refused: str | None, tmp_path: Path
) -> None:
    """ssh stops on a ``%`` at the end of a path whose tokens it expands ("invalid
    format"); asyncssh and the known_hosts lookup took it for a letter of the file's name.
    It is a configuration error naming the file and line; a value ssh does not take (a
    later IdentityAgent) is not refused, nor a ``%%``."""
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box\n  HostName 127.0.0.1\n  ProxyCommand false\n  " + lines.format(d=tmp_path)
    )
    _, _, said = _ssh_proxy_and_keys(cfg)
    assert ("invalid format" in said) == (refused is not None), said
    # No known_hosts of the inventory where the ssh_config's is to be used, and refused.
    known = None if refused == "UserKnownHostsFile" else str(cfg)
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=known)
    problem = SSHPool().preflight(ep, "box")
    if refused is None:
        assert problem is None, problem
        return
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(cfg))
    line = 4 + lines.count("\n") - 1
    assert problem.message.startswith(f"ssh_config line {line}: {refused} "), problem.message
    assert "ends in a '%' that starts no token" in problem.message, problem.message


def test_a_user_known_hosts_file_the_inventory_replaces_is_not_refused(tmp_path: Path) -> None:
    """ssh never expands a UserKnownHostsFile that ``-o UserKnownHostsFile=...`` replaces,
    and goes on with a ``%`` at its end; so does the inventory's known_hosts, which was
    refused for it. A ProxyJump host, which the inventory's known_hosts does not reach,
    uses the line, and is refused for it."""
    known = tmp_path / "known"
    known.write_text("")
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box\n  HostName 127.0.0.1\n  ProxyCommand false\n"
        f"Host *\n  UserKnownHostsFile {tmp_path}/kh%\n"
    )
    _, _, said = _ssh_proxy_and_keys(cfg, "-o", f"UserKnownHostsFile={known}")
    assert "invalid format" not in said and "Executing proxy command" in said, said
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(known))
    assert SSHPool().preflight(ep, "box") is None
    assert options.prepare(ep, "box").resolved.keys.user == (str(known),)
    cfg.write_text(cfg.read_text().replace("ProxyCommand false", "ProxyJump hop"))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert problem.message.startswith("ProxyJump host 'hop': ssh_config line 5: "), problem
    assert "ends in a '%' that starts no token" in problem.message, problem.message


@given(st.text(alphabet="%ab", max_size=12))
def test_a_lone_percent_at_the_end_is_told_from_a_doubled_one(text: str) -> None:
    """A ``%`` ends the text alone when the run of ``%`` it ends is odd (``%%`` is one
    ``%``): what ssh stops on in a path, and nothing else."""
    run = len(text) - len(text.rstrip("%"))
    assert sshconfig.ends_in_lone_percent(text) == (run % 2 == 1)


def test_a_lookup_is_kept_while_its_files_are_unchanged_and_an_edit_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every round of a sync looked every host up again: the files walked and parsed anew
    (about 1 ms a host for a 20-host ssh_config). A lookup is kept while every file read,
    every Include pattern's matches and the environment are as they were; an edit, a file
    an Include now matches, a changed variable, is seen; a ``Match exec`` line, whose
    command may answer otherwise each time, keeps nothing."""
    # A file changed within 2 s is never kept (the clock's ticks are coarse): not waited for
    # here, so each edit below changes the size.
    monkeypatch.setattr(filecache, "_RECENT_NS", 0)
    walks: list[str] = []
    lookups: list[str] = []
    walk, resolve = lookup.check_config_files, lookup._resolve

    def walking(paths: list[str], *args: Any) -> Any:
        walks.append(paths[0])
        return walk(paths, *args)

    def resolving(endpoint: Endpoint, *args: Any) -> Any:
        lookups.append(endpoint.address)
        return resolve(endpoint, *args)

    monkeypatch.setattr(lookup, "check_config_files", walking)
    monkeypatch.setattr(lookup, "_resolve", resolving)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {conf_d}/*\nHost box\n  Port 2201\n")
    known = tmp_path / "known_hosts"
    known.write_text("")
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(known))

    def port() -> int:
        return options.prepare(ep, "box").resolved.port

    assert [port(), port(), port()] == [2201] * 3
    assert (len(walks), len(lookups)) == (1, 1), (walks, lookups)
    assert SSHPool().preflight(ep, "box") is None  # the pre-flight's is the same
    assert (len(walks), len(lookups)) == (1, 1), (walks, lookups)

    cfg.write_text(f"Include {conf_d}/*\nHost box\n  Port 22022\n")
    assert [port(), port()] == [22022] * 2
    assert (len(walks), len(lookups)) == (2, 2), (walks, lookups)

    (conf_d / "box.conf").write_text("Host box\n  Port 2203\n")  # Included, first: it wins
    assert [port(), port()] == [2203] * 2
    assert (len(walks), len(lookups)) == (3, 3), (walks, lookups)

    monkeypatch.setenv("RS_SOMETHING", "new")  # a value may name it (${RS_SOMETHING})
    assert port() == 2203
    assert (len(walks), len(lookups)) == (3, 4), (walks, lookups)

    (conf_d / "box.conf").write_text('Match exec "true"\n  Port 2204\n')
    assert [port(), port()] == [2204] * 2
    assert (len(walks), len(lookups)) == (4, 6), (walks, lookups)


def test_a_preflight_loads_its_keys_again_only_when_a_file_it_read_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sync's pre-flight loaded every host's private keys again (the agent's: 20 loads
    a round); a load that went well is now kept while the files it read are as they were.
    A key edited, replaced by one that does not load, or given a ``.pub`` beside it is
    loaded again, and a load that failed is made again (and fails again) at every pre-flight."""
    monkeypatch.setattr(filecache, "_RECENT_NS", 0)  # no file is taken for one changed just now
    monkeypatch.setattr(options, "_KEYS_LOADED", {}, raising=False)
    loads: list[object] = []
    load = asyncssh.load_keypairs

    def loading(keys: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(keys)
        return load(keys, *args, **kwargs)

    monkeypatch.setattr(asyncssh, "load_keypairs", loading)
    cfg = tmp_path / "config"
    cfg.write_text("Host box\n  HostName 127.0.0.1\n")
    known = tmp_path / "known_hosts"
    known.write_text("")
    key = tmp_path / "id_box"

    def write_key(data: bytes) -> None:
        # replaced, as ssh-keygen does: a new inode whatever the size (two ed25519 keys have
        # the same) and however coarse the clock's times
        fresh = tmp_path / "id_box.new"
        fresh.write_bytes(data)
        fresh.chmod(0o600)
        fresh.replace(key)

    write_key(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    ep = Endpoint(
        address="box", ssh_config=(str(cfg),), known_hosts=str(known), identity_files=(str(key),)
    )
    pool = SSHPool()
    assert [pool.preflight(ep, "box"), pool.preflight(ep, "box")] == [None, None]
    assert len(loads) == 1
    write_key(b"this is not a private key\n")
    for _ in range(2):
        problem = pool.preflight(ep, "box")
        assert isinstance(problem, ConfigError) and "cannot load" in str(problem), problem
    assert len(loads) == 5  # each failure loads each key alone too, to name the one
    other = asyncssh.generate_private_key("ssh-ed25519")
    write_key(other.export_private_key())
    assert [pool.preflight(ep, "box"), pool.preflight(ep, "box")] == [None, None]
    assert len(loads) == 6
    Path(f"{key}.pub").write_bytes(other.export_public_key())  # read by the load when there
    assert [pool.preflight(ep, "box"), pool.preflight(ep, "box")] == [None, None]
    assert len(loads) == 7
    monkeypatch.setattr(filecache, "_RECENT_NS", 2_000_000_000)  # a file changed just now
    assert [pool.preflight(ep, "box"), pool.preflight(ep, "box")] == [None, None]
    assert len(loads) == 9


def test_a_kept_lookup_is_not_kept_past_a_changed_variable_its_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup's key holds a digest of the environment, not a copy of it: a variable the
    ssh_config names (``${RS_KH_DIR}``) changed is a new lookup with its new value, and the
    old value again finds the old lookup."""
    resolve = lookup._resolve
    lookups: list[str] = []

    def resolving(endpoint: Endpoint, *args: Any) -> Any:
        lookups.append(endpoint.address)
        return resolve(endpoint, *args)

    monkeypatch.setattr(lookup, "_resolve", resolving)
    monkeypatch.setattr(lookup, "_LOOKUPS", {})
    cfg = tmp_path / "config"
    cfg.write_text("Host box\n  UserKnownHostsFile ${RS_KH_DIR}/known\n")
    ep = Endpoint(address="box", ssh_config=(str(cfg),))

    def known(value: str) -> tuple[str, ...]:
        monkeypatch.setenv("RS_KH_DIR", value)
        return lookup.cached_lookup(ep, [str(cfg)], "box", ("v1",)).keys.user

    assert [known("/a"), known("/a")] == [("/a/known",)] * 2
    assert len(lookups) == 1
    assert [known("/b"), known("/b")] == [("/b/known",)] * 2
    assert len(lookups) == 2
    assert known("/a") == ("/a/known",)
    assert len(lookups) == 2


def test_kept_lookups_hold_no_copy_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 hosts' lookups kept with a 12 KB environment: their keys held a copy of it each
    (240 KB); a digest of it is a few hundred bytes a host, key and all."""
    for i in range(100):
        monkeypatch.setenv(f"RS_FILLER_{i:03d}", "v" * 100)
    monkeypatch.setattr(lookup, "_LOOKUPS", {})
    found = lookup.Resolved("h", 22, "u", hostkeys.HostKeyFiles((), (), None))
    monkeypatch.setattr(lookup, "_resolve", lambda *args: found)
    endpoints = [Endpoint(address=f"h{i}", ssh_config=("cfg",)) for i in range(20)]
    version = ("v1",)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ep in endpoints:
            assert lookup.cached_lookup(ep, ["cfg"], "h", version) is found
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(lookup._LOOKUPS) == 20
    assert held < 20 * 1024, f"{held} bytes held by 20 kept lookups"


@pytest.mark.parametrize(
    "line",
    [
        'Match exec="test -e {flag}"',
        'Match !exec="test ! -e {flag}"',
        'Match host box exec="test -e {flag}"',
    ],
)
def test_a_match_exec_joined_to_its_command_by_an_equals_sign_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str
) -> None:
    """``Match exec="cmd"`` runs the command, as ssh runs it (an ``=`` parts a criterion
    from its argument; OpenSSH 9.2's ``ssh -G`` follows it too): the walk took the word
    ``exec="..."`` for no criterion, so the lookup was kept, and a command that answered
    otherwise at the next round was never asked again."""
    monkeypatch.setattr(filecache, "_RECENT_NS", 0)
    flag = tmp_path / "flag"
    cfg = tmp_path / "config"
    cfg.write_text(line.format(flag=flag) + "\n  Port 2299\nHost *\n  Port 22\n")
    known = tmp_path / "known_hosts"
    known.write_text("")
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(known))

    def port() -> int:
        return options.prepare(ep, "box").resolved.port

    assert port() == 22
    flag.write_text("")
    assert port() == 2299


def test_a_long_lived_pools_preflight_reads_a_jump_host_again(tmp_path: Path) -> None:
    """The pre-flight took a ProxyJump host's reading from an earlier one: a pool that lives
    on (the agent's) kept a bastion's first HostName and Port for every later connection
    through it. Each pre-flight now reads its jump hosts again, edits included."""
    cfg = tmp_path / "config"

    def write(port: int) -> None:
        cfg.write_text(
            f"Host bastion\n  HostName 127.0.0.1\n  Port {port}\n"
            "Host box\n  HostName 127.0.0.2\n  ProxyJump bastion\n"
        )

    def bastion_port(pool: SSHPool) -> int:
        (port,) = [
            prepared.resolved.port
            for hop, prepared in pool._prepared.items()
            if hop.address == "bastion"
        ]
        return port

    write(2201)
    pool = SSHPool()
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    assert pool.preflight(ep, "box") is None
    assert bastion_port(pool) == 2201
    write(2202)
    os.utime(cfg, ns=(1, 1))  # another version even within the file system's clock tick
    assert pool.preflight(ep, "box") is None
    assert bastion_port(pool) == 2202
