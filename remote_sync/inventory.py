"""The host inventory: a TOML file (or ad-hoc ``[user@]host[:port]`` specs) turned into hosts.

This module owns :class:`Source` (what to mirror on a host: format, remote root, globs),
:class:`Host` (a named endpoint plus its source), :class:`Inventory` with host selection by
name, tag or ad-hoc spec, :func:`load_inventory` with its validation, :func:`adhoc_host`, and
the rules for host names (they name the host's directory in the mirror).

Inventory schema (read with :mod:`tomllib`)::

    [defaults]                       # optional; every key may also be set per host
    ssh_config = "~/.ssh/config"     # string or list, read as ssh -F reads it (no
                                     # /etc/ssh/ssh_config); unset: ~/.ssh/config, then
                                     # /etc/ssh/ssh_config, as ssh reads them
    known_hosts = "~/.ssh/known_hosts"
    format = "openclaw"              # see remote_sync.formats; default "openclaw"
    root = "~/.openclaw"             # remote directory; default: the format's

    [[hosts]]
    name = "pi-kitchen"              # default: the address (made directory-safe)
    address = "pi-kitchen"           # ssh_config alias, host name, or user@host:port
    user = "pi"
    port = 22
    identity_file = "~/.ssh/id_ed25519"   # string or list
    root = "/home/pi/.openclaw"
    tags = ["edge"]
    include = ["agents/*/sessions/**"]    # replaces the format's include globs
    exclude = ["**/*.tmp"]                # added to the format's (and [defaults]') excludes
    host_key_policy = "strict"            # or "accept-new"
    proxy_command = "ssh -W %h:%p bastion"
    compression = true                    # SSH compression, like ssh -C (default false)

Rules:

* ``[defaults]`` takes ssh_config, known_hosts, format, root, user, port, identity_file,
  include, exclude, host_key_policy, proxy_command, compression; ``[[hosts]]`` also name,
  address, tags.
  Any other key or table is an error. A per-host value replaces the default, except
  ``exclude``, which accumulates: the format's, then ``[defaults]``', then the host's.
* ``root`` and ``include`` in ``[defaults]`` belong to the format of ``[defaults]``: when it
  names a format, a host with another format gets that format's own root and include globs.
* A ``user`` or ``port`` in the address wins over ``[defaults]``; one that contradicts the
  host's own ``user``/``port`` key is an error.
* Local paths (ssh_config, known_hosts, identity_file) that are relative are taken relative to
  the inventory file's directory; ``~`` paths are kept for the SSH layer to expand. The remote
  ``root`` is never made relative to anything; only its redundant slashes and ``.``
  components are dropped (:func:`normal_root`), so one directory has one spelling.
* Host names must be unique (ignoring letter case, for case-insensitive file systems) and
  usable as one directory name: not empty, no ``/``, NUL or control character, not starting
  with ``.``, no white space at either end, at most 255 bytes of UTF-8.
* Entries with equal address, user, port, keys and ssh settings get equal
  :class:`~remote_sync.ssh.endpoint.Endpoint` values, and so share one SSH connection.

Every problem is a :class:`~remote_sync.errors.ConfigError` whose ``path`` is the inventory
file and whose message starts with the line of the offending key or entry, e.g.
``inventory.toml: line 12: unknown key 'adress' in [[hosts]] #2 (did you mean 'address'?)``.
:mod:`tomllib` gives no positions, so a small scanner of the TOML text maps every key, array
element and table header to its line.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import msgspec

from .errors import (
    AuthenticationError,
    ConfigError,
    HostKeyError,
    HostUnreachableError,
    RemoteSyncError,
    close_matches,
)
from .formats import FORMATS, get_format
from .globs import GlobSet, compile_globs, start_points
from .ssh.endpoint import Endpoint, HostKeyPolicy

__all__ = [
    "DEFAULT_FORMAT",
    "AdhocOptions",
    "Host",
    "Inventory",
    "Source",
    "adhoc_host",
    "host_name_problem",
    "load_inventory",
    "normal_root",
    "sanitize_host_name",
]

DEFAULT_FORMAT = "openclaw"
HOST_KEY_POLICIES: tuple[HostKeyPolicy, ...] = ("strict", "accept-new")
MAX_NAME_BYTES = 255

_DEFAULT_KEYS = (
    "ssh_config",
    "known_hosts",
    "format",
    "root",
    "user",
    "port",
    "identity_file",
    "include",
    "exclude",
    "host_key_policy",
    "proxy_command",
    "compression",
)
_HOST_ONLY_KEYS = ("name", "address", "tags")
_HOST_KEYS = _DEFAULT_KEYS + _HOST_ONLY_KEYS


# --------------------------------------------------------------------------- model


def normal_root(root: str) -> str:
    """``root`` spelt without what names no other directory: trailing and repeated slashes
    and ``.`` components (``~/.openclaw/`` is ``~/.openclaw``, ``/srv//a/./b`` is
    ``/srv/a/b``). A ``..`` stays: after a symlink it leads elsewhere than its text says."""
    absolute = root.startswith("/")
    kept = "/".join(part for part in root.split("/") if part not in ("", "."))
    if absolute:
        return "/" + kept
    if kept.startswith("~") and not root.startswith("~"):
        # "./~x" names a directory called "~x"; "~x" would be user x's home on the host.
        return "./" + kept
    return kept or "."


@dataclass(frozen=True)
class Source:
    """What to mirror on a host: files under ``root`` matched by the globs (see globs.py)."""

    format: str
    #: Remote directory (may start with ``~``); never a local path.
    root: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    append_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        get_format(self.format)
        if not isinstance(self.root, str) or not self.root or "\x00" in self.root:
            raise ConfigError(f"bad remote root {self.root!r}", hint="give a remote directory")
        # One directory, one spelling: the mirror records its host's root and refuses another
        # one (mirror.fleet's source check), so "~/.openclaw/" must be "~/.openclaw".
        object.__setattr__(self, "root", normal_root(self.root))
        # Compile now: a bad glob fails here, not in the middle of a run.
        _ = self.include_set, self.exclude_set, self.append_only_set

    @cached_property
    def include_set(self) -> GlobSet:
        return compile_globs(self.include)

    @cached_property
    def exclude_set(self) -> GlobSet:
        return compile_globs(self.exclude)

    @cached_property
    def append_only_set(self) -> GlobSet:
        return compile_globs(self.append_only)

    def is_included(self, path: bytes) -> bool:
        """Whether to mirror ``path`` (relative to the root): included and not excluded."""
        return self.include_set.match(path) and not self.exclude_set.match(path)

    @cached_property
    def moved_to_set(self) -> GlobSet:
        return compile_globs(get_format(self.format).moved_to)

    def shows_moved_store(self, path: bytes) -> bool:
        """Whether ``path`` shows that the agent keeps its sessions elsewhere (see
        :attr:`~remote_sync.formats.FormatSpec.moved_to`)."""
        return self.moved_to_set.match(path)

    def is_append_only(self, path: bytes) -> bool:
        """Whether ``path`` grows by appends (pull its tail) rather than being copied whole."""
        return self.append_only_set.match(path)

    @property
    def start_points(self) -> list[str]:
        """Where, relative to the root, a remote listing starts (see :func:`start_points`)."""
        return start_points(self.include)


@dataclass(frozen=True)
class Host:
    """One inventory entry (or ad-hoc host)."""

    #: Unique; names the host in output and its directory in the mirror.
    name: str
    #: Equal endpoints share one SSH connection.
    endpoint: Endpoint
    source: Source
    tags: tuple[str, ...] = ()
    #: Named on the command line, not in an inventory: errors then name options to give,
    #: not inventory keys to fix. Not compared: it says where the host came from, not what
    #: it is.
    adhoc: bool = field(default=False, compare=False)
    #: For an ad-hoc host named beside an inventory, which lacks that name: what its
    #: failure to connect or log in says of it (:meth:`explain`). A mistyped inventory name
    #: is taken for an address, and the error of its DNS lookup alone did not say so.
    unlisted: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problem = host_name_problem(self.name)
        if problem:
            raise ConfigError(f"host name {self.name!r} {problem}", hint=_NAME_HINT)

    def explain(self, error: RemoteSyncError) -> RemoteSyncError:
        """``error``, this host's, with the hint of an :attr:`unlisted` host before its own
        when the host could not be reached (its name not resolved, or no connection made),
        or when some host answered at that name but refused its key or ours: a mistyped
        inventory name may also be a real machine's, and its key or login errors alone do
        not say that the name was not the inventory's."""
        if self.unlisted is None or (error.hint or "").startswith(self.unlisted):
            return error  # said once, however many times the error is reported
        if isinstance(error, HostUnreachableError):
            error.hint = f"{self.unlisted}; if it is one, {error.hint}"
        elif isinstance(error, (HostKeyError, AuthenticationError)) and not (
            # A ProxyJump host's refusal (the pool names it so): that host answered, not one
            # at this name, which may still not exist.
            error.message.startswith("ProxyJump host ")
        ):
            error.hint = (
                f"{self.unlisted}, and a host answered there; if it is the one meant, {error.hint}"
            )
        return error


class AdhocOptions(msgspec.Struct, frozen=True):
    """How to build hosts named on the command line that are not in the inventory."""

    format: str = DEFAULT_FORMAT
    root: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    ssh_config: str | None = None
    known_hosts: str | None = None
    identity_file: str | None = None
    host_key_policy: HostKeyPolicy = "strict"


class Inventory(msgspec.Struct):
    """The hosts of one inventory file (``path`` None: built in memory, e.g. ad-hoc only)."""

    path: Path | None
    hosts: list[Host] = msgspec.field(default_factory=list)

    def get(self, name: str) -> Host | None:
        """The host called ``name``, if any."""
        return next((host for host in self.hosts if host.name == name), None)

    @property
    def tags(self) -> list[str]:
        """Every tag some host has, sorted."""
        return sorted({tag for host in self.hosts for tag in host.tags})

    def select(
        self,
        names: Sequence[str] = (),
        tags: Sequence[str] = (),
        *,
        adhoc: AdhocOptions | None = None,
    ) -> list[Host]:
        """The hosts to work on, in order, without duplicates.

        No names and no tags: every host. Names pick inventory hosts by name; a name that is
        not in the inventory becomes an ad-hoc host (:func:`adhoc_host` with ``adhoc``
        options). Tags add every host having any of them (in inventory order, after the
        named hosts); a tag no host has is an error, as is an ad-hoc host whose derived name
        is already taken by a different host.
        """
        if isinstance(names, str) or isinstance(tags, str):
            raise TypeError("names and tags are sequences of strings")
        options = adhoc or AdhocOptions()
        by_name = {host.name: host for host in self.hosts}
        by_folded = {host.name.casefold(): host for host in self.hosts}
        chosen: list[Host] = []
        taken: dict[str, Host] = {}

        def add(host: Host, asked: str) -> None:
            other = taken.get(host.name.casefold())
            if other is None:
                taken[host.name.casefold()] = host
                chosen.append(host)
            elif other != host:
                raise ConfigError(
                    f"{asked!r} would be named {host.name!r}, "
                    f"but that name is already used by another host",
                    path=self._label,
                    hint="add the host to the inventory with a name of its own",
                )

        for name in names:
            host = by_name.get(name)
            if host is None:
                host = adhoc_host(
                    name,
                    format=options.format,
                    root=options.root,
                    include=options.include,
                    exclude=options.exclude,
                    ssh_config=options.ssh_config,
                    known_hosts=options.known_hosts,
                    identity_file=options.identity_file,
                    host_key_policy=options.host_key_policy,
                )
                if self.path is not None:
                    host = replace(host, unlisted=self._unlisted(name, host.endpoint))
                # Its mirror directory must not be an inventory host's, selected or not.
                clash = by_folded.get(host.name.casefold())
                if clash is not None:
                    raise ConfigError(
                        f"{name!r} would be named {host.name!r}, "
                        f"but that name is already used by inventory host {clash.name!r}",
                        path=self._label,
                        hint=f"use the inventory name {clash.name!r}, "
                        "or add the host to the inventory with a name of its own",
                    )
            add(host, name)
        if tags:
            known = set(self.tags)
            for tag in tags:
                if tag not in known:
                    raise ConfigError(
                        f"no host has the tag {tag!r}",
                        path=self._label,
                        hint=f"known tags: {', '.join(sorted(known)) or '(none)'}",
                    )
            wanted = set(tags)
            for host in self.hosts:
                if wanted.intersection(host.tags):
                    add(host, host.name)
        elif not names:
            for host in self.hosts:
                add(host, host.name)
        return chosen

    @property
    def _label(self) -> str | None:
        return str(self.path) if self.path is not None else None

    def _unlisted(self, name: str, endpoint: Endpoint) -> str:
        """What to say of ``name``, not a host of this inventory, when it fails as an
        address (unreachable, or its host key or login refused): that it is not one, and the
        inventory's hosts at that address (``endpoint``, the ad-hoc host's), else its names
        closest to it."""
        # An operator used to ssh or pssh names a machine by its address: the entries at it
        # are what was meant, with their ssh_config, keys and roots, none of which an ad-hoc
        # host has (its address then may not even resolve).
        at_address = [
            host.name
            for host in self.hosts
            if host.endpoint.address.casefold() == endpoint.address.casefold()
            and endpoint.user in (None, host.endpoint.user)
            and endpoint.port in (None, host.endpoint.port)
        ]
        if at_address:
            which, them = ("its host", "it") if len(at_address) == 1 else ("its hosts", "them")
            aside = (
                f"the address of {which} {', '.join(repr(n) for n in at_address)}; "
                f"sync {them} by name, with the inventory's settings"
            )
        else:
            folded = {host.name.casefold(): host.name for host in self.hosts}
            close = close_matches(name.casefold(), list(folded), n=3)
            if close:
                aside = f"did you mean {' or '.join(repr(folded[c]) for c in close)}?"
            else:
                names = [host.name for host in self.hosts]
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                aside = f"its hosts: {shown}"
        return (
            f"{name!r} is not a host of the inventory {self.path} ({aside}), so it was tried "
            "as an address or ssh_config alias"
        )


# --------------------------------------------------------------------------- host names

_NAME_HINT = (
    "a host name names a directory: no '/', NUL or control characters, "
    "not starting with '.' nor starting or ending with white space, at most 255 bytes"
)
_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/\ud800-\udfff]")


def host_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a host name (a phrase like "contains '/'"), or None if it can."""
    if not isinstance(name, str):
        return "is not a string"
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}"
    if "/" in name:
        return "contains '/'"
    if "\x00" in name:
        return "contains a NUL character"
    if _BAD_NAME_CHARS.search(name):
        return "contains a control character"
    if name.startswith("."):
        return "starts with '.'"
    if name != name.strip():
        # " " would be a blank in every table; "pi " a second pi that no one can tell apart.
        return "starts or ends with white space"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def sanitize_host_name(text: str) -> str:
    """``text`` made into a valid host name: bad characters become ``_``, a leading ``.`` too."""
    name = _BAD_NAME_CHARS.sub("_", text)
    if name.startswith("."):
        name = "_" + name[1:]
    name = name or "_"
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    return name


# --------------------------------------------------------------------------- ad-hoc hosts


def adhoc_host(
    spec: str,
    *,
    format: str = DEFAULT_FORMAT,
    root: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    ssh_config: str | None = None,
    known_hosts: str | None = None,
    identity_file: str | None = None,
    host_key_policy: HostKeyPolicy = "strict",
) -> Host:
    """A host from a command-line spec: ``[user@]host[:port]`` or an ssh_config alias.

    The host's name is the spec itself, made directory-safe by :func:`sanitize_host_name`.
    Paths are used as given (relative ones relative to the working directory).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"bad host spec {spec!r}", hint="use [user@]host[:port]")
    if host_key_policy not in HOST_KEY_POLICIES:
        raise ConfigError(
            f"bad host key policy {host_key_policy!r}", hint="use 'strict' or 'accept-new'"
        )
    spec_format = get_format(format)
    remote_root = root or spec_format.default_root
    globs = tuple(include) or spec_format.include
    # The command line has --root but no option for include globs: a format without
    # default globs (jsonl) is only usable ad hoc from the API, so the hint says where else
    # they can be given rather than asking for what the command line cannot pass.
    need_globs = (
        "include globs relative to the root, which the command line has no option for: "
        "add the host to an inventory with root and include = [...] "
        "(the API's adhoc_host takes include=)"
    )
    if remote_root is None:
        raise ConfigError(
            f"format {format!r} has no default root",
            host=spec,
            hint="give the remote root (--root)" + ("" if globs else f" and {need_globs}"),
        )
    if not globs:
        raise ConfigError(
            f"format {format!r} has no default include globs", host=spec, hint=f"give {need_globs}"
        )
    endpoint = Endpoint.parse(
        spec,
        identity_files=(identity_file,) if identity_file else (),
        ssh_config=(ssh_config,) if ssh_config else None,
        known_hosts=known_hosts or None,
        host_key_policy=host_key_policy,
    )
    source = Source(
        format=format,
        root=remote_root,
        include=globs,
        exclude=_unique(spec_format.exclude + tuple(exclude)),
        append_only=spec_format.append_only,
    )
    return Host(name=sanitize_host_name(spec), endpoint=endpoint, source=source, adhoc=True)


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# --------------------------------------------------------------------------- loading

_Where = tuple[str | int, ...]


def lists_no_hosts(path: str) -> ConfigError:
    """The error of a sync of every host of the inventory at ``path`` when it has none (the
    command line's and the agent's, in the same words)."""
    return ConfigError(
        "the inventory lists no hosts",
        path=path,
        hint="add a [[hosts]] table with a name and an address, or name hosts to sync",
    )


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate the inventory at ``path``; every problem is a ``ConfigError``."""
    file = Path(path)
    label = str(file)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "inventory file not found", path=label, hint="check the inventory path"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the inventory: {exc.strerror or exc}",
            path=label,
            hint="check the inventory path and its permissions",
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"line {line}: not valid UTF-8", path=label, hint="save the inventory as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(label, text, exc) from None
    loader = _Loader(label, file.absolute().parent, data, _locate(text))
    return Inventory(path=file, hosts=loader.load())


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)$")


def _syntax_error(label: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    hint = "fix the TOML syntax there; see https://toml.io"
    match = _TOML_POSITION.search(message)
    if match:
        reason = message[: match.start()]
        where = f"line {match.group(1)}, column {match.group(2)}"
        return ConfigError(f"{where}: invalid TOML: {reason}", path=label, hint=hint)
    match = _TOML_AT_END.search(message)
    if match:
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        reason = message[: match.start()]
        return ConfigError(
            f"line {max(line, 1)}: invalid TOML at the end of the file: {reason}",
            path=label,
            hint=hint,
        )
    return ConfigError(f"invalid TOML: {message}", path=label, hint=hint)


class _Loader:
    """Validates the parsed TOML, naming the line of every problem."""

    def __init__(
        self, label: str, base_dir: Path, data: dict[str, Any], lines: dict[_Where, int]
    ) -> None:
        self.label = label
        self.base_dir = base_dir
        self.data = data
        self.lines = lines

    # -- errors

    def line_of(self, where: _Where) -> int | None:
        for end in range(len(where), 0, -1):
            line = self.lines.get(where[:end])
            if line is not None:
                return line
        return None

    def error(self, where: _Where, message: str, hint: str | None = None) -> ConfigError:
        line = self.line_of(where)
        text = f"line {line}: {message}" if line is not None else message
        return ConfigError(text, path=self.label, hint=hint)

    def by_line(self, where: _Where, keys: Sequence[str]) -> list[str]:
        """``keys`` of the table at ``where``, in the order they appear in the file."""
        return sorted(keys, key=lambda key: self.line_of((*where, key)) or 0)

    def unknown_key(self, where: _Where, key: str, table: str, allowed: Sequence[str]) -> None:
        if table == "[defaults]" and key in _HOST_ONLY_KEYS:
            hint = f"'{key}' can only be set per host, in [[hosts]]"
        else:
            close = close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
        raise self.error((*where, key), f"unknown key '{key}' in {table}", hint)

    # -- the document

    def load(self) -> list[Host]:
        for key in self.by_line((), list(self.data)):
            if key not in ("defaults", "hosts"):
                kind = "table" if isinstance(self.data[key], dict) else "key"
                close = close_matches(key, ("defaults", "hosts"), n=1)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else "an inventory has a [defaults] table and [[hosts]] entries"
                )
                raise self.error((key,), f"unknown {kind} '{key}'", hint)
        defaults_table = self.data.get("defaults", {})
        if not isinstance(defaults_table, dict):
            raise self.error(("defaults",), "'defaults' must be a table", "write [defaults]")
        defaults = self.settings(("defaults",), defaults_table, "[defaults]", _DEFAULT_KEYS)
        entries = self.data.get("hosts", [])
        if not isinstance(entries, list):
            raise self.error(
                ("hosts",),
                "'hosts' must be an array of tables",
                "write each host as a [[hosts]] entry (double brackets)",
            )
        hosts: list[Host] = []
        first_use: dict[str, int] = {}
        for index, entry in enumerate(entries):
            where: _Where = ("hosts", index)
            if not isinstance(entry, dict):
                raise self.error(where, f"[[hosts]] #{index + 1} is not a table")
            host = self.host(where, entry, defaults)
            folded = host.name.casefold()
            if folded in first_use:
                other = first_use[folded]
                named = "name" in entry
                raise self.error(
                    (*where, "name") if named else where,
                    f"duplicate host name {host.name!r} in [[hosts]] #{index + 1} "
                    f"(already used by [[hosts]] #{other + 1}"
                    f"{self.at_line(('hosts', other))})",
                    "give each host a distinct name; names are compared ignoring case"
                    if named
                    else 'give this entry a name = "..." of its own',
                )
            first_use[folded] = index
            hosts.append(host)
        return hosts

    def at_line(self, where: _Where) -> str:
        line = self.line_of(where)
        return f", line {line}" if line is not None else ""

    @staticmethod
    def entry_label(where: _Where, entry: dict[str, Any]) -> str:
        label = f"[[hosts]] #{cast(int, where[1]) + 1}"
        name = entry.get("name")
        if isinstance(name, str) and host_name_problem(name) is None:
            return f"{label} ({name!r})"
        return label

    def host(self, where: _Where, entry: dict[str, Any], defaults: dict[str, Any]) -> Host:
        label = self.entry_label(where, entry)
        own = self.settings(where, entry, label, _HOST_KEYS)
        if "address" not in own:
            raise self.error(
                where,
                f"{label} has no address",
                'add address = "...": an ssh_config alias, a host name or user@host:port',
            )
        address: str = own["address"]
        try:
            parsed = Endpoint.parse(address)
        except ConfigError as exc:
            raise self.error((*where, "address"), exc.message, exc.hint) from None
        user, port = parsed.user, parsed.port
        for key, from_address in (("user", parsed.user), ("port", parsed.port)):
            if key in own and from_address is not None and own[key] != from_address:
                raise self.error(
                    (*where, key),
                    f"{key} {own[key]!r} contradicts the address {address!r} in {label}",
                    f"give the {key} in one place only",
                )
        user = own.get("user", user if user is not None else defaults.get("user"))
        port = own.get("port", port if port is not None else defaults.get("port"))

        def pick(key: str, default: Any = None) -> Any:
            return own.get(key, defaults.get(key, default))

        format_name: str = pick("format", DEFAULT_FORMAT)
        spec = FORMATS[format_name]
        defaults_apply = "format" not in defaults or defaults["format"] == format_name
        root: str | None = own.get("root")
        if root is None:
            root = defaults.get("root") if defaults_apply else None
        root = root or spec.default_root
        if root is None:
            raise self.error(
                where,
                f"{label}: format '{format_name}' has no default root",
                'set root = "/remote/dir" in this entry or in [defaults]',
            )
        include: tuple[str, ...] = own.get("include", ())
        if "include" not in own:
            include = defaults.get("include", ()) if defaults_apply else ()
            include = include or spec.include
        if not include:
            raise self.error(
                (*where, "include") if "include" in own else where,
                f"{label}: no include globs, nothing would be mirrored"
                if "include" in own
                else f"{label}: format '{format_name}' has no default include globs",
                'set include = ["..."] (globs relative to root) here or in [defaults]',
            )
        exclude = _unique(spec.exclude + defaults.get("exclude", ()) + own.get("exclude", ()))
        name: str = own.get("name") or sanitize_host_name(address)
        try:
            endpoint = Endpoint(
                address=parsed.address,
                user=user,
                port=port,
                identity_files=pick("identity_file", ()),
                ssh_config=pick("ssh_config"),
                known_hosts=pick("known_hosts"),
                host_key_policy=pick("host_key_policy", "strict"),
                proxy_command=pick("proxy_command"),
                compression=pick("compression"),
            )
            source = Source(
                format=format_name,
                root=root,
                include=include,
                exclude=exclude,
                append_only=spec.append_only,
            )
            return Host(name=name, endpoint=endpoint, source=source, tags=own.get("tags", ()))
        except ConfigError as exc:  # a safety net: the checks above should have caught it
            raise self.error(where, f"{label}: {exc.message}", exc.hint) from None

    # -- one table's settings

    def settings(
        self, where: _Where, table: dict[str, Any], label: str, allowed: Sequence[str]
    ) -> dict[str, Any]:
        """Check the keys and value types of ``table``; the values converted for use."""
        for key in self.by_line(where, list(table)):
            if key not in allowed:
                self.unknown_key(where, key, label, allowed)
        out: dict[str, Any] = {}
        for key in self.by_line(where, list(table)):
            out[key] = self.value((*where, key), key, table[key], label)
        return out

    def value(self, where: _Where, key: str, value: Any, label: str) -> Any:
        def bad(what: str, hint: str | None = None) -> ConfigError:
            return self.error(where, f"'{key}' in {label} {what}", hint)

        def text(item: Any, at: _Where = where) -> str:
            if not isinstance(item, str):
                raise self.error(at, f"'{key}' in {label} must be a string, not {_kind(item)}")
            if not item:
                raise self.error(at, f"'{key}' in {label} must not be empty")
            if "\x00" in item:
                raise self.error(at, f"'{key}' in {label} contains a NUL character")
            return item

        def texts(items: Any, single: bool) -> tuple[str, ...]:
            if single and isinstance(items, str):
                return (text(items),)
            if not isinstance(items, list):
                shape = "a string or a list of strings" if single else "a list of strings"
                raise bad(f"must be {shape}, not {_kind(items)}")
            return tuple(text(item, (*where, i)) for i, item in enumerate(items))

        if key in ("name",):
            name = text(value)
            problem = host_name_problem(name)
            if problem:
                raise bad(f"is {name!r}, which {problem}", _NAME_HINT)
            return name
        if key in ("address", "user", "root", "proxy_command"):
            return text(value)
        if key == "port":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(f"must be an integer, not {_kind(value)}", "e.g. port = 2222")
            if not 0 < value < 65536:
                raise bad(f"is {value}, outside 1..65535")
            return value
        if key == "compression":
            if not isinstance(value, bool):
                raise bad(f"must be true or false, not {_kind(value)}")
            return value
        if key == "format":
            fmt = text(value)
            if fmt not in FORMATS:
                raise bad(f"names an unknown format {fmt!r}", f"known: {', '.join(FORMATS)}")
            return fmt
        if key == "host_key_policy":
            policy = text(value)
            if policy not in HOST_KEY_POLICIES:
                raise bad(f"is {policy!r}", "use 'strict' or 'accept-new'")
            return policy
        if key == "known_hosts":
            return self.local_path(text(value))
        if key in ("ssh_config", "identity_file"):
            return tuple(self.local_path(item) for item in texts(value, single=True))
        if key == "tags":
            return _unique(texts(value, single=False))
        if key in ("include", "exclude"):
            globs = texts(value, single=False)
            for i, glob in enumerate(globs):
                try:
                    compile_globs([glob])
                except ConfigError as exc:
                    raise self.error((*where, i), exc.message, exc.hint) from None
            return globs
        raise AssertionError(f"no validator for {key!r}")  # pragma: no cover

    def local_path(self, text: str) -> str:
        """A local path from the inventory: relative ones are relative to its directory."""
        if text.startswith("~") or os.path.isabs(text):
            return text
        return str(self.base_dir / text)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- positions


class _Stop(Exception):
    """The scanner met something it does not follow; keep the positions found so far."""


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\r\n]+")


def _locate(text: str) -> dict[_Where, int]:
    """Map every key, table header and array element of valid TOML ``text`` to its line.

    Keys are paths like ``("hosts", 1, "port")`` (the second ``[[hosts]]`` entry's ``port``)
    or ``("hosts", 1, "tags", 0)`` (an array element).
    """
    scanner = _Scanner(text)
    with contextlib.suppress(_Stop, IndexError, ValueError):
        scanner.document()
    return scanner.lines


class _Scanner:
    """Just enough of a TOML lexer to know where things are (the text is already valid)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[_Where, int] = {}
        self.array_tables: dict[_Where, int] = {}

    def line(self, pos: int) -> int:
        return bisect_left(self.newlines, pos) + 1

    def mark(self, where: _Where, pos: int) -> None:
        self.lines.setdefault(where, self.line(pos))

    def skip(self, newlines: bool = False) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            char = text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                return

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)

    def document(self) -> None:
        table: _Where = ()
        while True:
            self.skip(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self.text.startswith("[[", start):
                self.pos += 2
                keys = self.key()
                self.skip()
                self.expect("]]")
                full = (*self.concrete(keys[:-1]), keys[-1])
                index = self.array_tables.get(full, 0)
                self.array_tables[full] = index + 1
                table = (*full, index)
                for end in range(1, len(table) + 1):
                    self.mark(table[:end], start)
            elif self.text[start] == "[":
                self.pos += 1
                keys = self.key()
                self.skip()
                self.expect("]")
                table = self.concrete(keys)
                for end in range(1, len(table) + 1):
                    self.mark(table[:end], start)
            else:
                self.keyval(table)

    def concrete(self, keys: tuple[str, ...]) -> _Where:
        """A header's dotted key, with the current index after each array-of-tables prefix."""
        out: _Where = ()
        for key in keys:
            out = (*out, key)
            if out in self.array_tables:
                out = (*out, self.array_tables[out] - 1)
        return out

    def key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self.skip()
            start = self.pos
            if self.text[start] in "\"'":
                self.string()
                parts.append(_unquote(self.text[start : self.pos]))
            else:
                match = _BARE_KEY.match(self.text, start)
                if not match:
                    raise _Stop
                parts.append(match.group())
                self.pos = match.end()
            self.skip()
            if not self.text.startswith(".", self.pos):
                return tuple(parts)
            self.pos += 1

    def keyval(self, table: _Where) -> None:
        start = self.pos
        keys = self.key()
        for end in range(1, len(keys) + 1):
            self.mark((*table, *keys[:end]), start)
        self.skip()
        self.expect("=")
        self.skip()
        self.value((*table, *keys))

    def value(self, where: _Where) -> None:
        text = self.text
        char = text[self.pos]
        if text.startswith('"""', self.pos) or text.startswith("'''", self.pos):
            self.multiline_string()
        elif char in "\"'":
            self.string()
        elif char == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip(newlines=True)
                if text[self.pos] == "]":
                    self.pos += 1
                    return
                self.mark((*where, index), self.pos)
                self.value((*where, index))
                self.skip(newlines=True)
                if text[self.pos] == ",":
                    self.pos += 1
                index += 1
        elif char == "{":
            self.pos += 1
            while True:
                self.skip(newlines=True)
                if text[self.pos] == "}":
                    self.pos += 1
                    return
                self.keyval(where)
                self.skip(newlines=True)
                if text[self.pos] == ",":
                    self.pos += 1
        else:
            match = _SCALAR.match(text, self.pos)
            if not match:
                raise _Stop
            self.pos = match.end()

    def string(self) -> None:
        text, quote = self.text, self.text[self.pos]
        i = self.pos + 1
        while text[i] != quote:
            i += 2 if quote == '"' and text[i] == "\\" else 1
        self.pos = i + 1

    def multiline_string(self) -> None:
        text = self.text
        delimiter = text[self.pos : self.pos + 3]
        i = self.pos + 3
        while not text.startswith(delimiter, i):
            i += 2 if delimiter == '"""' and text[i] == "\\" else 1
        end = i + 3
        while end < len(text) and end - i < 5 and text[end] == delimiter[0]:
            end += 1  # up to two quotes right before the delimiter belong to the string
        self.pos = end


def _unquote(quoted: str) -> str:
    try:
        value = tomllib.loads(f"k = {quoted}")["k"]
    except tomllib.TOMLDecodeError:
        return quoted[1:-1]
    return value if isinstance(value, str) else quoted[1:-1]
