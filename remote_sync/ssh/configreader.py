"""asyncssh's ssh_config reader, patched at import to read as ssh reads.

What it owns: the patches of asyncssh's ``SSHClientConfig``, applied when this module is
first imported (the lookup imports it, so before any connection is made), each recorded
once on the class (:func:`_applied`), and each leaving asyncssh as it is where its reader
is not as expected (another asyncssh):

- an ``Include`` read as ssh reads it (:func:`_sort_config_includes`: a glob's files
  sorted, without dot files; relative paths of the system-wide file under its directory),
  its handler replaced (``pathlib.Path.glob`` is never changed);
- what a reading is given noted while it reads (:func:`_read_system_file_as_ssh_does`):
  which file is the system-wide one, and whether the inventory gives the ProxyCommand or
  the known_hosts file, or the endpoint its ProxyJump hosts (:class:`_InventoryGives`,
  :func:`config_files`), as ``ssh -o`` and ``ssh -J`` give them before the files;
- the host name lowercased at the end of a reading, as ssh's, ``Match host`` compared
  ignoring case, and the final pass started from it (:func:`_lowercase_host_as_ssh_does`);
- the tokens of IdentityFile, CertificateFile, IdentityAgent, ForwardAgent and ProxyCommand
  expanded once every file is read, as ssh expands them
  (:func:`_expand_tokens_once_every_file_is_read`);
- every line split into ssh's words, and what ssh reads there that asyncssh refused or read
  otherwise (:func:`_read_config_as_ssh_does`: end-of-line comments, an ``=`` inside
  quotes, times with units, ``Host`` patterns, ProxyCommand and ProxyJump as one choice, a
  ``Match exec`` command's tokens, a lone ``%`` in a path, a User the connection could not
  send, StrictHostKeyChecking, HashKnownHosts and PubkeyAcceptedAlgorithms kept).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

from .endpoint import Endpoint
from .proxy import refused_proxy_command
from .sshconfig import (
    MATCH_ALONE,
    SystemWide,
    UnsafeTokenValue,
    ends_in_lone_percent,
    expand_match_exec,
    expand_proxy_command,
    host_block_applies,
    include_paths,
    lowercase_host,
    match_exec_tokens,
    split_line,
    user_name_problem,
)

log = logging.getLogger(__name__)

#: ssh's two names of one option (the second its old one): the first line of either wins.
PUBKEY_ALGORITHMS = ("PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes")


#: Where asyncssh's client config class keeps the names of the patches of this module
#: applied to it: each is applied once, in whatever order and however often the functions
#: are called (a marker on a wrapper was hidden by the next wrapper of the same method, and
#: a patch applied twice expanded tokens twice).
_PATCHES_APPLIED = "_remote_sync_patches"


def _config_class() -> Any:
    """asyncssh's SSHClientConfig (None where there is none: another asyncssh)."""
    return getattr(getattr(asyncssh, "config", None), "SSHClientConfig", None)


def _applied(config_class: Any) -> set[str]:
    """The names of the patches applied to ``config_class`` (:data:`_PATCHES_APPLIED`)."""
    applied: set[str] | None = config_class.__dict__.get(_PATCHES_APPLIED)
    if applied is None:
        applied = set()
        setattr(config_class, _PATCHES_APPLIED, applied)
    return applied


#: What asyncssh's reading of ssh_config files is given to read (its ``config_paths``),
#: while it reads them; None otherwise. Per thread and task, as lookups run in both. Its
#: ``system`` (:class:`~remote_sync.ssh.sshconfig.SystemWide`) is the system-wide file,
#: read last; its ``proxy_command_given`` and ``known_hosts_given`` (:class:`_InventoryGives`)
#: say the inventory gives the ProxyCommand, the known_hosts file.
_READING_FILES: contextvars.ContextVar[object] = contextvars.ContextVar(
    "remote_sync_ssh_config_files", default=None
)


def _sort_config_includes() -> None:
    """Make asyncssh read an ssh_config ``Include`` as ssh reads it
    (:func:`_include_as_ssh_does`): the files of a glob sorted and without the dot files a
    wildcard does not match in glob(3), and a relative path of the system-wide file (or of
    a file it Includes) under that file's directory.

    asyncssh's own handler took ``Path.glob``, in directory order and with dot files, so
    with first-match-wins a host could get another file's HostName or Port than ssh gives
    it (and be mirrored under the wrong name), or an editor's swap file's. Its handler is
    replaced, not wrapped: ``pathlib.Path.glob`` is never changed (swapped for the time of
    an Include, it was swapped for every thread of the process). Where the handler is not
    asyncssh's own (another asyncssh), nothing is changed."""
    module: Any = getattr(asyncssh, "config", None)
    config_class = _config_class()
    handlers = getattr(config_class, "_handlers", None)
    entry = handlers.get("include") if isinstance(handlers, dict) else None
    own = getattr(getattr(module, "SSHConfig", None), "_include", None)
    if entry is None or own is None or "include" in _applied(config_class):
        return
    assert isinstance(handlers, dict)
    if entry[1] is not own:
        return
    handlers["include"] = (entry[0], _include_as_ssh_does)
    _applied(config_class).add("include")


def _include_as_ssh_does(config: Any, option: str, args: list[str]) -> None:
    """asyncssh's Include handler (``SSHConfig._include``, as asyncssh 2.x has it), reading
    what ssh reads: each pattern's files as glob(3) finds them
    (:func:`~remote_sync.ssh.sshconfig.include_paths`), the regular files among them; a
    relative pattern under ~/.ssh, or, in the system-wide file and the files it Includes
    (:func:`_reading_system_file`), under that file's directory, as ssh takes them."""
    if _reading_system_file(config):
        config._system_includes = True
        system = getattr(_READING_FILES.get(), "system", None)
        config._default_path = Path(os.path.dirname(str(system)))
    old_path, old_line_no = config._path, config._line_no
    for pattern in args:
        path = Path(pattern).expanduser()
        if path.anchor:
            pattern, path = str(Path(*path.parts[1:])), Path(path.anchor)
        else:
            path = config._default_path
        matched = include_paths(os.path.join(path, pattern))
        found = [name for name in matched if os.path.isfile(name)]
        if not found:
            log.debug("ssh_config Include %s matched no files", pattern)
        for name in found:
            config.parse(Path(name))
    config._path, config._line_no = old_path, old_line_no
    config._matching = True
    args.clear()


class _InventoryGives(SystemWide):
    """The ssh_config files of an endpoint whose ProxyCommand or known_hosts file the
    inventory gives, read as ``ssh -o ProxyCommand=... -o UserKnownHostsFile=...`` reads
    them: a value given before the files is the first obtained, and what the files say is
    not used. With ``proxy_command_given``, their ProxyCommand and ProxyJump lines are not
    taken (:func:`_first_proxy`) and their tokens are not expanded (nor refused): ssh never
    runs them, and %j is empty. With ``proxy_jump_given``
    (:attr:`~remote_sync.ssh.endpoint.Endpoint.proxy_jump`, as ``ssh -J`` gives it) the reading
    starts with that ProxyJump, so that the lines are not taken either, and %j and %C are of its
    last hop (:func:`_read_system_file_as_ssh_does`). With ``known_hosts_given``, a
    UserKnownHostsFile path is not refused for a lone ``%`` (:func:`_refusing_lone_percent`): ssh
    never expands it."""

    def __init__(
        self,
        paths: list[str],
        *,
        proxy_command_given: bool,
        known_hosts_given: bool,
        proxy_jump_given: str | None = None,
    ) -> None:
        super().__init__(paths, getattr(paths, "system", None))
        self.proxy_command_given = proxy_command_given
        self.known_hosts_given = known_hosts_given
        self.proxy_jump_given = None if proxy_command_given else proxy_jump_given


def config_files(endpoint: Endpoint, files: list[str]) -> list[str]:
    """``files``, the ssh_config files read for ``endpoint``, as asyncssh is given them: an
    :class:`_InventoryGives` when the inventory gives the ProxyCommand (``none`` too) or
    the known_hosts file, or the endpoint its ProxyJump hosts."""
    if not endpoint.proxy_command and endpoint.known_hosts is None and not endpoint.proxy_jump:
        return files
    return _InventoryGives(
        files,
        proxy_command_given=bool(endpoint.proxy_command),
        known_hosts_given=endpoint.known_hosts is not None,
        proxy_jump_given=endpoint.proxy_jump or None,
    )


class _GivenFirst:
    """What asyncssh's first pass over the ssh_config starts from (its ``last_config``)
    when values are given before any file, as ssh's command line gives them: ``options``."""

    def __init__(self, options: dict[str, object]) -> None:
        self.options = options

    def get_options(self, reload: bool) -> dict[str, object]:
        return dict(self.options)


def _read_system_file_as_ssh_does() -> None:
    """Make asyncssh note what its reading of ssh_config files is given
    (:data:`_READING_FILES`): which file is the system-wide one, whose relative Include
    paths, and those of the files it Includes, ssh takes under its directory (Debian's
    ``Include /etc/ssh/ssh_config.d/*.conf`` is absolute, others need not be), where
    asyncssh took every one under ~/.ssh (:func:`_include_as_ssh_does`); and whether the
    inventory gives the ProxyCommand or the known_hosts file (:class:`_InventoryGives`),
    or the endpoint its ProxyJump hosts, which the reading then starts with.
    Which file is the system-wide one it learns from the list it is given
    (:func:`~remote_sync.ssh.sshconfig.default_files`), read last: once an Include line of
    that file is read, every later one of the same reading is the system's. Where
    asyncssh's reader is not as expected (another asyncssh), nothing is changed."""
    config_class = _config_class()
    real_load = getattr(getattr(config_class, "load", None), "__func__", None)
    if real_load is None or "files" in _applied(config_class):
        return

    def loading(cls: Any, last_config: Any, config_paths: Any, *args: Any) -> Any:
        given = getattr(config_paths, "proxy_jump_given", None)
        if given and last_config is None:
            # Before the first line, as ssh -J sets it: first obtained, it wins (a final
            # pass starts from the first pass's options, which hold it already).
            last_config = _GivenFirst({"ProxyJump": given})
        token = _READING_FILES.set(config_paths)
        try:
            return real_load(cls, last_config, config_paths, *args)
        finally:
            _READING_FILES.reset(token)

    config_class.load = classmethod(loading)
    _applied(config_class).add("files")


def _reading_system_file(config: Any) -> bool:
    """Whether asyncssh's reading ``config`` is at a line of the system-wide ssh_config or
    of a file it Includes (:data:`_READING_FILES`): that file, read last, or any file once
    one of its Include lines was read."""
    system = getattr(_READING_FILES.get(), "system", None)
    return system is not None and (
        getattr(config, "_system_includes", False) or str(config._path) == system
    )


_sort_config_includes()
_read_system_file_as_ssh_does()


#: The Match criteria whose value is a host name, compared as ssh compares it (ignoring
#: case); ``user``, ``localuser`` and ``tagged`` are compared as they are, as in ssh.
_HOST_CRITERIA = ("host", "originalhost")


def _lowercase_host_as_ssh_does() -> None:
    """Make asyncssh's reading of an ssh_config end, as ssh's does, with the host name
    lowercased (:func:`~remote_sync.ssh.sshconfig.lowercase_host`): the HostName (the name
    asked for when none is set) and the HostKeyAlias. The connection goes to that name and
    looks its key up under it (asyncssh kept ``PI-Kitchen`` as written, and missed the key
    that ssh, and ssh-keyscan, record under ``pi-kitchen``). A final pass (``Match final``)
    starts from it, as ssh's does (:class:`_FinalPassStart`: its %h and ``Match host``
    see the lowercased name; the first pass sees the name as written, as in ssh). And a
    ``Match host`` or ``originalhost`` pattern is compared with the name ignoring case, as
    ssh compares them (``Host`` patterns stay case-sensitive, as in ssh).

    The ``%h`` of the options whose tokens are expanded once the files are read
    (IdentityFile, CertificateFile, ProxyCommand, IdentityAgent, ForwardAgent:
    :func:`_expand_tokens_once_every_file_is_read`) is that lowercased name too, and ``%C``
    is hashed from it, as ssh expands them after lowercasing it (asyncssh used the HostName
    as written: ``id_%h`` was ``id_Real.Example`` where ssh loads ``id_real.example``), and
    from the ProxyJump host, as OpenSSH 9.6 and later hash it, and as ``Match exec`` has it;
    they have ssh's %k and %j too, which asyncssh lacked (all from
    :func:`~remote_sync.ssh.sshconfig.match_exec_tokens`, as the UserKnownHostsFile's).

    Where asyncssh's reader is not as expected (another asyncssh), nothing is changed."""
    config_class = _config_class()
    real_load = getattr(getattr(config_class, "load", None), "__func__", None)
    match_val = getattr(config_class, "_match_val", None)
    set_tokens = getattr(config_class, "_set_tokens", None)
    if (
        real_load is None
        or match_val is None
        or set_tokens is None
        or "lowercase" in _applied(config_class)
    ):
        return

    def loading(
        cls: Any,
        last_config: Any,
        paths: Any,
        reload: bool,
        canonical: bool,
        final: bool,
        *args: Any,
    ) -> Any:
        if reload and final and not canonical and last_config is not None:
            last_config = _FinalPassStart(last_config)
        config = real_load(cls, last_config, paths, reload, canonical, final, *args)
        options: dict[str, Any] = config._options
        host = options.get("Hostname", config._orig_host)
        if isinstance(host, str):
            options["Hostname"] = lowercase_host(host)
        alias = options.get("HostKeyAlias")
        if isinstance(alias, str):
            options["HostKeyAlias"] = lowercase_host(alias)
        return config

    def host_values(config: Any, match: str) -> object:
        value = match_val(config, match)
        return (
            lowercase_host(value) if match in _HOST_CRITERIA and isinstance(value, str) else value
        )

    def lowercased_tokens(config: Any) -> None:
        set_tokens(config)
        tokens: dict[str, str] = config._tokens
        host = tokens.get("h")
        if isinstance(host, str):
            # The tokens of Match exec, which ssh expands in these options too (ssh.c's
            # default client expansion): %C with the jump host, as OpenSSH 9.6 and later
            # hash it (asyncssh's, as 9.2's, had none, so one config had two); %k and %j,
            # which asyncssh lacked and stopped on. %k is the HostKeyAlias (lowercased, as
            # ssh has it by then), else the name as asked for.
            options: dict[str, Any] = config._options
            jumps, alias = options.get("ProxyJump"), options.get("HostKeyAlias")
            tokens.update(
                match_exec_tokens(
                    host=lowercase_host(host),
                    original_host=tokens["n"],
                    port=int(tokens["p"]),
                    remote_user=tokens["r"],
                    local_user=tokens["u"],
                    key_alias=lowercase_host(alias) if isinstance(alias, str) else tokens["n"],
                    proxy_jump=jumps if isinstance(jumps, str) else None,
                )
            )

    config_class.load = classmethod(loading)
    config_class._match_val = host_values
    config_class._set_tokens = lowercased_tokens
    _applied(config_class).add("lowercase")


class _FinalPassStart:
    """What asyncssh's final pass over the ssh_config starts from (its ``last_config``): the
    options the first pass started from, and the HostName that pass ended with, lowercased,
    which ssh gives its final pass as its host name (and which, set first, no HostName line
    of that pass replaces)."""

    def __init__(self, first: Any) -> None:
        self.first = first

    def get_options(self, reload: bool) -> dict[str, object]:
        options: dict[str, object] = self.first.get_options(reload)
        host = self.first.get("Hostname")
        if host is not None:
            options["Hostname"] = host
        return options


_lowercase_host_as_ssh_does()


def _expand_tokens_once_every_file_is_read() -> None:
    """Make asyncssh expand the ``%`` tokens of an ssh_config once it has read every file, as
    ssh expands them once its whole configuration is read: IdentityFile, CertificateFile,
    IdentityAgent and ForwardAgent with its tokens and ``${VAR}`` (those of
    :func:`_lowercase_host_as_ssh_does`), and ProxyCommand with the tokens ssh expands there
    alone (:func:`~remote_sync.ssh.sshconfig.expand_proxy_command`: %h %k %n %p %r %%; any
    other refused with its file and line, as ssh stops on it; asyncssh expanded every token
    of the paths there, and ``${VAR}``, which ssh leaves to the command).

    asyncssh expanded them at the end of each file it read, an Include'd one too, from what
    was read so far: a HostName, User or HostKeyAlias set by a later file (the system-wide
    one, read after ~/.ssh/config) or after the Include line did not reach ``%h %r %k``
    (``id_%h`` named the host as asked for, not its HostName), and a ``%%`` that one file's
    expansion made ``%`` was expanded again by the next one's (``cert_%%C`` became a
    hash). A RemoteCommand's tokens are not expanded: it is never run
    (:func:`~remote_sync.ssh.options.ignored_remote_command`), and asyncssh stopped the whole host
    on one it lacks that ssh expands there (%k, %j).

    Applied only once :func:`_lowercase_host_as_ssh_does` is: the tokens come from its
    ``_set_tokens`` (asyncssh's own lack %k and %j, which a ProxyCommand's expansion looks
    up). Where asyncssh's reader is not as expected (another asyncssh), nothing is
    changed: asyncssh expands the tokens at the end of each file, as it did."""
    config_class = _config_class()
    expanded = getattr(config_class, "_percent_expand", None)
    real_load = getattr(getattr(config_class, "load", None), "__func__", None)
    if (
        not isinstance(expanded, set)
        or real_load is None
        or "lowercase" not in _applied(config_class)
        or "expand_once" in _applied(config_class)
    ):
        return
    paths = tuple(sorted(expanded - {"ProxyCommand", "RemoteCommand"}))
    config_class._percent_expand = set()  # nothing expanded at the end of each file

    def loading(cls: Any, last_config: Any, config_paths: Any, *args: Any) -> Any:
        config = real_load(cls, last_config, config_paths, *args)
        if config.loaded:  # a file was read (none: nothing to expand)
            _expand_read_options(config, paths)
        return config

    config_class.load = classmethod(loading)
    _applied(config_class).add("expand_once")


def _expand_read_options(config: Any, paths: Sequence[str]) -> None:
    """The options ``paths`` and ProxyCommand of asyncssh's finished reading ``config``
    expanded (:func:`_expand_tokens_once_every_file_is_read`), from the tokens of its
    options as every file left them. A ProxyCommand here is the one that runs (the first
    of ProxyCommand and ProxyJump, :func:`_first_proxy`): a token's value in it that the
    shell could read as code (a host name as typed ``box$(id)`` in %n, a ProxyJump hop's
    name in its own lookup's %h) is refused with the file and line, as an unknown token is,
    so the pre-flight finds it before the destination is touched and nothing runs."""
    config._set_tokens()
    options: dict[str, Any] = config._options
    for option in paths:
        value = options.get(option)
        if isinstance(value, list):
            options[option] = [config._expand_val(item) for item in value]
        elif isinstance(value, str):
            options[option] = config._expand_val(value)
    command = options.get("ProxyCommand")
    if isinstance(command, str):
        try:
            options["ProxyCommand"] = expand_proxy_command(command, config._tokens)
        except ValueError as exc:
            path, line = config.__dict__.get("_set_at", {}).get(
                "ProxyCommand", (config._path, config._line_no)
            )
            message, hint = refused_proxy_command(exc, "the ProxyCommand")
            raise _RefusedLine(f"{path} line {line}: {message}", hint) from None


_expand_tokens_once_every_file_is_read()


#: ssh's time format (convtime): seconds, or numbers with units, as in "1m30s".
_SSH_TIME = re.compile(r"(?:\d+[smhdw])*\d*", re.IGNORECASE)
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The options asyncssh reads as integers that ssh reads as times.
_TIME_OPTIONS = ("connecttimeout", "serveraliveinterval")


def _ssh_seconds(text: str) -> str | None:
    """``text`` (an ssh_config time, "90", "1m30s") in seconds, or None if it is none."""
    if not text or _SSH_TIME.fullmatch(text) is None:
        return None
    parts = re.findall(r"(\d+)([smhdw]?)", text, re.IGNORECASE)
    return str(sum(int(number) * _TIME_UNITS[unit.lower()] for number, unit in parts))


class _SSHWords:
    """What asyncssh's config reader splits its lines with (``shlex``): the words ssh reads
    (:func:`~remote_sync.ssh.sshconfig.split_line`: the keyword split off at blanks or one
    ``=``, the line's comment cut off, quotes and backslashes read as ssh reads them, an
    ``=`` inside quotes kept in its word). (ssh gives a ProxyCommand the rest of its line,
    comment included, to the shell, for which it is a comment too.)"""

    @staticmethod
    def split(line: str) -> list[str]:
        return split_line(line)


def _read_config_as_ssh_does() -> None:
    """Make asyncssh split every line of ssh_config as ssh splits it (:class:`_SSHWords`;
    its ``shlex`` dropped a backslash ssh keeps: ``User DOMAIN\\u`` was ``DOMAINu``), and
    so read three things of ssh_config syntax that ssh reads and asyncssh refused, failing
    every host of the config (ssh_config(5)):

    - a comment at the end of a line (asyncssh took its words for values, and an
      apostrophe in it for an unclosed quote);
    - an ``=`` inside quotes on a Host or Match line (``Match exec "test %h = x"``: asyncssh
      cut the command in two there, "Invalid match condition");
    - a time with units (``ServerAliveInterval 1m``, ``ConnectTimeout 10s``).

    decide whether a ``Host`` line applies as ssh decides (:func:`_host_block`: its words
    are patterns, a comma in one a character, where asyncssh read one comma-separated list);
    refuse, naming its file and line, a User the connection could not send
    (:func:`_checking_user`), and a path ending in a ``%`` that starts no token, as ssh
    refuses it (:func:`_refusing_lone_percent`);
    take a ProxyCommand or a ProxyJump as ssh takes them: the first one of the two
    obtained, the other not at all (:func:`_first_proxy`);
    expand ssh's ``%`` tokens in a ``Match exec`` command, which it ran as written
    (:func:`_expanding_match_exec`), and keep the StrictHostKeyChecking and HashKnownHosts
    options, which it skipped, and PubkeyAcceptedAlgorithms (or PubkeyAcceptedKeyTypes),
    which it skips too, for the pre-flight to check and the connection to apply. (The
    tokens of the other options: :func:`_expand_tokens_once_every_file_is_read`.)

    Where asyncssh's reader is not as expected (another asyncssh), nothing is changed.
    """
    module: Any = getattr(asyncssh, "config", None)
    config_class = _config_class()
    handlers = getattr(config_class, "_handlers", None)
    if not isinstance(handlers, dict) or "words" in _applied(config_class):
        return
    _applied(config_class).add("words")
    if getattr(module, "shlex", None) is shlex:
        module.shlex = _SSHWords
    set_string = getattr(getattr(module, "SSHConfig", None), "_set_string", None)
    set_bool = getattr(getattr(module, "SSHConfig", None), "_set_bool", None)
    if set_bool is not None:
        # asyncssh skips it; a host key recorded under accept-new follows it (HostKeyClient).
        handlers.setdefault("hashknownhosts", ("HashKnownHosts", set_bool))
    if set_string is not None:
        # asyncssh skips it; its accept-new is followed (see SSHPool._connect).
        handlers.setdefault("stricthostkeychecking", ("StrictHostKeyChecking", set_string))
        for option in PUBKEY_ALGORITHMS:
            handlers.setdefault(option.lower(), (option, _first_of_both(set_string)))
    wrapped = (
        *((key, _reading_times) for key in _TIME_OPTIONS),
        *((option.lower(), _noting_where) for option in _WHERE_NOTED),
        *((option.lower(), _refusing_lone_percent) for option in _PATH_OPTIONS),
        ("proxycommand", _first_proxy),
        ("proxyjump", _first_proxy),
        ("user", _checking_user),
    )
    for key, wrapper in wrapped:
        entry = handlers.get(key)
        if entry is not None:
            handlers[key] = (entry[0], wrapper(entry[1]))
    if "host" in handlers:
        handlers["host"] = (handlers["host"][0], _host_block)
    entry = handlers.get("match")
    run = getattr(module, "_exec", None)
    if entry is not None and run is not None:
        handlers["match"] = (entry[0], _expanding_match_exec(entry[1]))
        module._exec = _running_checked(run)


#: The options holding paths whose tokens ssh expands (IdentityFile and the others asyncssh
#: expands, :func:`_expand_tokens_once_every_file_is_read`; UserKnownHostsFile, expanded by
#: the lookup, :func:`~remote_sync.ssh.lookup._expand_tokens`).
_PATH_OPTIONS = (
    "CertificateFile",
    "ForwardAgent",
    "IdentityAgent",
    "IdentityFile",
    "UserKnownHostsFile",
)


def _refusing_lone_percent(handler: Any) -> Any:
    """asyncssh's setter of a path option (:data:`_PATH_OPTIONS`), refusing a path it takes
    that ends in a ``%`` starting no token, as an error naming the file and line: ssh stops
    on it when it expands the path ("invalid format"), where asyncssh took the ``%`` for a
    letter of the file's name. A value not taken (a later line of an option whose first
    value wins) is not expanded by ssh, and not refused; nor is a UserKnownHostsFile when
    the inventory's known_hosts replaces it (:class:`_InventoryGives`), as ssh goes on with
    ``-o UserKnownHostsFile=...`` given."""

    def read(config: Any, option: str, args: list[str]) -> None:
        if option == "UserKnownHostsFile" and getattr(
            _READING_FILES.get(), "known_hosts_given", False
        ):
            handler(config, option, args)  # kept, never used (_resolve)
            return
        options: dict[str, Any] = config._options
        had = option in options
        before = options.get(option)
        kept = len(before) if isinstance(before, list) else 0
        handler(config, option, args)
        value = options.get(option)
        if had and not isinstance(value, list):
            return
        taken = value[kept:] if isinstance(value, list) else [value]
        for path in taken:
            if isinstance(path, str) and ends_in_lone_percent(path):
                raise _RefusedLine(
                    f"{config._path} line {config._line_no}: {option} {path!r} ends in a "
                    "'%' that starts no token, which ssh refuses too (\"invalid format\")",
                    hint="write %% for a % in the path",
                )

    return read


def _first_proxy(handler: Any) -> Any:
    """asyncssh's setter of ProxyCommand or ProxyJump, taking a value only when ssh takes
    it (readconf.c): the two are one choice, whose first value obtained wins. So a
    ProxyCommand is not taken after a ProxyJump (``ProxyJump none`` excepted, as OpenSSH
    9.2 runs a ProxyCommand after it), a ProxyJump not after a ProxyCommand (``none``
    included), and neither when the inventory gives the ProxyCommand
    (:class:`_InventoryGives`), as ``ssh -o ProxyCommand=...`` gives it before the
    files. asyncssh took both: the connection opened the jump hosts where ssh ran the
    command, %j and %C were of a jump host ssh never used, and a token ssh would never
    expand in a command it would never run was refused.

    A ProxyCommand's value starts where ssh starts it (readconf.c: ``strspn(str,
    WHITESPACE "=")``): after every blank and ``=`` that follows the keyword. asyncssh
    kept them from an ``=`` on (``ProxyCommand=nc %h %p`` ran ``exec =nc ...``, and
    ``ProxyCommand = none`` a program named ``none``)."""

    def read(config: Any, option: str, args: list[str]) -> None:
        options: dict[str, Any] = config._options
        if option == "ProxyCommand" and args:
            args[0] = args[0].lstrip(" \t\r\n=")
        if option == "ProxyCommand":
            other = isinstance(options.get("ProxyJump"), str)
        else:
            other = "ProxyCommand" in options
        if other or getattr(_READING_FILES.get(), "proxy_command_given", False):
            args.pop(0)  # its value, not taken (a ProxyJump's extra words still refused)
            return
        handler(config, option, args)

    return read


def _host_block(config: Any, option: str, args: list[str]) -> None:
    """asyncssh's Host handler, deciding as ssh decides
    (:func:`~remote_sync.ssh.sshconfig.host_block_applies`: each word one pattern, a comma in
    it a character; asyncssh joined the words into one comma-separated list, so ``Host a,b``
    applied to ``b``); an empty pattern is refused, as ssh refuses it."""
    if any(not word for word in args):
        config._error('an empty Host pattern, which ssh refuses too ("empty argument")')
    config._matching = host_block_applies(config._orig_host, args)
    args.clear()


def _checking_user(handler: Any) -> Any:
    """asyncssh's User setter, refusing the user name it takes if the connection could not
    send it, as an error naming the file and line: asyncssh puts user names through SASLprep
    (:func:`~remote_sync.ssh.sshconfig.user_name_problem`), which refuses a tab or another
    control character that ssh sends as it is (``User "a\tb"``),
    and the connection's options stopped on it with neither (a bare SASLPrepError)."""

    def read(config: Any, option: str, args: list[str]) -> None:
        before = config._options.get(option)
        handler(config, option, args)
        user = config._options.get(option)
        problem = user_name_problem(user) if before is None and isinstance(user, str) else None
        if problem is not None:
            raise _RefusedLine(
                f"{config._path} line {config._line_no}: the user name {user!r} cannot be "
                f"sent by the SSH library remote-sync uses ({problem}), though ssh sends it",
                hint="give a User without tabs or control characters",
            )

    return read


#: The options whose file and line are kept, for the warnings that name them.
_WHERE_NOTED = (
    "Ciphers",
    "MACs",
    "KexAlgorithms",
    "HostKeyAlgorithms",
    *PUBKEY_ALGORITHMS,
    "RemoteCommand",
    "ProxyCommand",
)


def _noting_where(handler: Any) -> Any:
    """asyncssh's setter of an option, keeping the file and line of the value it takes (the
    first one, as in ssh) in the reading's ``_set_at``, and the option in its
    ``_set_by_system`` when the system-wide ssh_config (or a file it Includes) set it."""

    def read(config: Any, option: str, args: list[str]) -> None:
        before = config._options.get(option)
        handler(config, option, args)
        if before is None and config._options.get(option) is not None:
            config.__dict__.setdefault("_set_at", {})[option] = (
                str(config._path),
                config._line_no,
            )
            if _reading_system_file(config):
                config.__dict__.setdefault("_set_by_system", set()).add(option)

    return read


def _expanding_match_exec(match: Any) -> Any:
    """asyncssh's Match handler, with the ``%`` tokens of each ``exec`` command expanded
    first, as ssh expands them (:func:`~remote_sync.ssh.sshconfig.expand_match_exec`), from
    the configuration read so far. A token ssh does not expand there is an error naming the
    file and line, on any Match line: ssh expands the command before it looks at the
    criteria before it, and stops on it. A value of one of the target's tokens (%h %n %k %r
    %p %j) that the shell could read as code is refused (:class:`_RefusedLine`, with
    what to do) only where the command would run: ssh skips the ``exec`` of a line whose
    earlier criteria failed, and so does asyncssh, which then never meets the refusal
    (:class:`_RefusedCommand`, raised by :func:`_running_checked`). A ``host`` or
    ``originalhost`` pattern is lowercased, to be compared ignoring case, as in ssh."""

    def read(config: Any, option: str, args: list[str]) -> None:
        i = 0
        while i < len(args):
            if args[i].startswith("#"):
                del args[i:]  # ssh ends the line at a criterion starting with #
                break
            criterion = args[i].lower().removeprefix("!")
            if criterion in MATCH_ALONE:
                i += 1
                continue
            if criterion == "exec" and i + 1 < len(args):
                args[i + 1] = _expanded_exec(config, args[i + 1])
            elif criterion in _HOST_CRITERIA and i + 1 < len(args):
                # Lowercased as the name it is compared with (_lowercase_host_as_ssh_does).
                args[i + 1] = lowercase_host(args[i + 1])
            i += 2
        match(config, option, args)

    return read


def _expanded_exec(config: Any, command: str) -> str:
    """``command`` of a ``Match exec`` with its tokens expanded from asyncssh's reading
    ``config``, or a :class:`_RefusedCommand` if a target's token value is unsafe."""
    tokens = _exec_tokens(config)
    where = f"{config._path} line {config._line_no}"  # as asyncssh words its errors
    try:
        return expand_match_exec(command, tokens)
    except UnsafeTokenValue as exc:
        try:  # an unknown token later in the command stops the reading, as in ssh
            expand_match_exec(command, dict.fromkeys(tokens, ""))
        except ValueError as unknown:
            raise asyncssh.ConfigParseError(f"{where}: {unknown}") from None
        return _RefusedCommand(command, _RefusedLine(f"{where}: {exc}", exc.hint))
    except ValueError as exc:
        raise asyncssh.ConfigParseError(f"{where}: {exc}") from None


class _RefusedCommand(str):
    """A ``Match exec`` command not to run, a target's token value being unsafe: its text
    as written, and the error to raise if asyncssh comes to run it."""

    def __new__(cls, command: str, error: _RefusedLine) -> _RefusedCommand:
        made = super().__new__(cls, command)
        made.error = error
        return made

    error: _RefusedLine


def _running_checked(run: Any) -> Any:
    """asyncssh's runner of a ``Match exec`` command, raising the refusal of a
    :class:`_RefusedCommand` instead of running it."""

    def run_checked(command: str) -> bool:
        if isinstance(command, _RefusedCommand):
            raise command.error
        return bool(run(command))

    return run_checked


class _RefusedLine(asyncssh.ConfigParseError):
    """asyncssh's error for a line of ssh_config (``PATH line N: REASON``, as it words its
    own), with what to do about it, which :func:`~remote_sync.ssh.options.local_failure` gives as
    the hint."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _exec_tokens(config: Any) -> dict[str, str]:
    """The ``Match exec`` tokens from asyncssh's reading so far (first value wins, so what
    lines above set is what ssh has too): its HostName has its own %h expanded already."""
    options: dict[str, Any] = config._options
    jumps = options.get("ProxyJump")
    return match_exec_tokens(
        host=str(options.get("Hostname", config._orig_host)),
        original_host=str(config._orig_host),
        port=int(options.get("Port") or 22),
        remote_user=str(options.get("User") or config._local_user),
        local_user=str(config._local_user),
        key_alias=options.get("HostKeyAlias"),
        proxy_jump=jumps if isinstance(jumps, str) else None,
    )


def _first_of_both(set_string: Any) -> Any:
    """asyncssh's string setter for PubkeyAcceptedAlgorithms and its old name: the first
    line of either is kept, as ssh reads both as one option."""

    def read(config: Any, option: str, args: list[str]) -> None:
        if any(config.get(name) is not None for name in PUBKEY_ALGORITHMS):
            args.pop(0)
            return
        set_string(config, option, args)

    return read


def _reading_times(handler: Any) -> Any:
    def read(config: Any, option: str, args: list[str]) -> None:
        seconds = _ssh_seconds(args[0])
        if seconds is not None:
            args[0] = seconds
        handler(config, option, args)

    return read


_read_config_as_ssh_does()
