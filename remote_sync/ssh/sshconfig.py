"""ssh_config read as OpenSSH's ``ssh`` reads it, where asyncssh's reader differs.

What it owns:

- How a line of ssh_config splits into words (:func:`split_line`, :func:`split_words`), as
  OpenSSH's argv_split splits it, where asyncssh used :mod:`shlex`: a backslash escapes
  only a backslash, a quote or (outside quotes) a blank, and any other is kept
  (``User CORP\\alice``); a word starting with ``#`` ends the line; the keyword split off
  at blanks or one ``=``; and an ``=`` inside quotes kept in its word
  (``Match exec "test %h = x"``), which asyncssh cut in two at the ``=`` as if it separated
  a keyword from its value. Read for every line of every file for every host, so most
  lines take a path in C.
- :data:`KEYWORDS`, every keyword an OpenSSH ``ssh`` accepts, its deprecated and unsupported
  ones (which it only warns about) and those of common vendor builds included.
- The walk ``ssh`` makes of the files before it uses them (:func:`check_config_files`):
  every line of every file, and of every file an ``Include`` names, whatever ``Host`` or
  ``Match`` block it is in (asyncssh reads neither the lines nor the Includes of a block
  that does not apply). What ``ssh`` refuses there is refused as this host's
  :class:`ConfigError`: a keyword it does not know, unless an ``IgnoreUnknown`` line before
  it names it ("Bad configuration option"; asyncssh skipped it without a word); the user's
  ``~/.ssh/config`` or an Include'd file that another user may change ("Bad owner or
  permissions"); an Include'd file that cannot be opened; Includes nested too deep; a
  ``~`` path in an Include of the system-wide file ("bad include path"); an empty value
  (``User ""``, "Missing argument"; asyncssh took it), but where ssh takes one
  (:data:`EMPTY_VALUE_TAKEN`); an ``Include ""`` ("empty argument"); a Match criterion
  without its argument (``Match exec ""``, :func:`match_line_problem`). What it read is
  returned (:class:`FilesRead`), for the lookup to tell whether the files changed since.
- The files an Include names (:func:`include_paths`), for this walk and asyncssh's
  reading alike: sorted, without the dot files a wildcard skips in glob(3).
- Which files are read (:func:`default_files`): with none named (ssh without ``-F``), the
  user's ``~/.ssh/config`` and then the system-wide :data:`SYSTEM_CONFIG`, whose relative
  Include paths are taken from its own directory (``/etc/ssh``), not from ``~/.ssh``, and
  which is not checked for others' write access (the files it Includes are).
- ``Match exec`` commands with ssh's ``%`` tokens expanded (:func:`expand_match_exec`),
  each value put in as it is, as ssh puts it, and a value of the target's tokens (%h %n %k
  %r %p %j) that the shell could read as more than a word refused (by the patched reader,
  where the command would run). A ProxyCommand with the tokens ssh expands there alone, %h %k %n %p
  %r and %% (:func:`expand_proxy_command`), any other refused, and a value of them that
  the shell could read as more than a word refused too. Either command named in errors
  by its program alone (:func:`command_name`).
- A ProxyJump hop read as ssh reads it (:func:`jump_hop`), an ``ssh://`` URI's user
  URL-decoded, and what ssh refuses there refused; %j (:func:`jump_host`).
- Whether a ``Host`` line applies (:func:`host_block_applies`): its words are patterns, a
  comma in one a character, not the comma-separated list asyncssh (and ``Match host``)
  reads.
- The host name lowercased as ssh lowercases it (:func:`lowercase_host`); %C
  (:func:`connection_hash`).
"""

from __future__ import annotations

import errno
import functools
import glob
import grp
import hashlib
import os
import pwd
import re
import shlex
import socket
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

from msgspec import Struct, field

from ..errors import ConfigError

#: The keywords of OpenSSH's readconf.c table (9.9), the ones added since (RefuseConnection
#: in 10.0, WarnWeakCrypto in 10.1) and the ones of older releases it no longer lists; then
#: those of common builds: Debian and Ubuntu (GSSAPI key exchange, its keep-alive aliases,
#: the old blacklist), Apple's UseKeychain, FreeBSD's and HPN-SSH's. A keyword one of them
#: accepts is accepted: refusing one would break a config that works with some ssh.
KEYWORDS = frozenset(
    {
        # Deprecated or unsupported: ssh warns (or says nothing) and goes on.
        "protocol", "cipher", "fallbacktorsh", "globalknownhostsfile2",
        "rhostsauthentication", "userknownhostsfile2", "useroaming", "usersh",
        "useprivilegedport", "afstokenpassing", "kerberosauthentication",
        "kerberostgtpassing", "rsaauthentication", "rhostsrsaauthentication",
        "compressionlevel", "gssapiauthentication", "gssapidelegatecredentials",
        "pkcs11provider", "smartcarddevice", "zeroknowledgepasswordauthentication",
        # The options.
        "forwardagent", "forwardx11", "forwardx11trusted", "forwardx11timeout",
        "exitonforwardfailure", "xauthlocation", "gatewayports", "passwordauthentication",
        "kbdinteractiveauthentication", "kbdinteractivedevices",
        "challengeresponseauthentication", "skeyauthentication", "tisauthentication",
        "pubkeyauthentication", "dsaauthentication", "hostbasedauthentication",
        "identityfile", "identityfile2", "identitiesonly", "certificatefile",
        "addkeystoagent", "identityagent", "hostname", "hostkeyalias", "proxycommand",
        "port", "ciphers", "macs", "remoteforward", "localforward", "permitremoteopen",
        "user", "host", "match", "tag", "escapechar", "globalknownhostsfile",
        "userknownhostsfile", "connectionattempts", "batchmode", "checkhostip",
        "stricthostkeychecking", "compression", "tcpkeepalive", "keepalive",
        "numberofpasswordprompts", "syslogfacility", "loglevel", "logverbose",
        "dynamicforward", "preferredauthentications", "hostkeyalgorithms",
        "casignaturealgorithms", "bindaddress", "bindinterface", "clearallforwardings",
        "enablesshkeysign", "verifyhostkeydns", "nohostauthenticationforlocalhost",
        "rekeylimit", "connecttimeout", "addressfamily", "serveraliveinterval",
        "serveralivecountmax", "sendenv", "setenv", "controlpath", "controlmaster",
        "controlpersist", "hashknownhosts", "include", "tunnel", "tunneldevice",
        "localcommand", "permitlocalcommand", "remotecommand", "visualhostkey",
        "kexalgorithms", "ipqos", "requesttty", "sessiontype", "stdinnull",
        "forkafterauthentication", "proxyusefdpass", "canonicaldomains",
        "canonicalizefallbacklocal", "canonicalizehostname", "canonicalizemaxdots",
        "canonicalizepermittedcnames", "streamlocalbindmask", "streamlocalbindunlink",
        "revokedhostkeys", "fingerprinthash", "updatehostkeys",
        "hostbasedacceptedalgorithms", "hostbasedkeytypes", "pubkeyacceptedalgorithms",
        "pubkeyacceptedkeytypes", "ignoreunknown", "proxyjump", "securitykeyprovider",
        "knownhostscommand", "requiredrsasize", "enableescapecommandline",
        "obscurekeystroketiming", "channeltimeout", "refuseconnection", "warnweakcrypto",
        # Debian and Ubuntu.
        "gssapikeyexchange", "gssapiclientidentity", "gssapiserveridentity",
        "gssapirenewalforcesrekey", "gssapitrustdns", "gssapikexalgorithms",
        "protocolkeepalives", "setuptimeout", "useblacklistedkeys",
        # macOS.
        "usekeychain",
        # FreeBSD and HPN-SSH.
        "hpndisabled", "hpnbuffersize", "tcprcvbufpoll", "tcprcvbuf", "noneenabled",
        "noneswitch", "nonemacenabled", "versionaddendum",
    }
)  # fmt: skip

#: The keywords whose value OpenSSH 9.2 takes empty (``User ""`` it refuses, "Missing
#: argument", as the value of any other): those it ignores, those whose value is the rest of
#: the line (a command), and ProxyJump.
EMPTY_VALUE_TAKEN = frozenset(
    {
        "afstokenpassing", "cipher", "compressionlevel", "fallbacktorsh",
        "globalknownhostsfile2", "kerberosauthentication", "kerberostgtpassing",
        "knownhostscommand", "localcommand", "protocol", "proxycommand", "proxyjump",
        "remotecommand", "rhostsauthentication", "rhostsrsaauthentication",
        "rsaauthentication", "useblacklistedkeys", "useprivilegedport", "userknownhostsfile2",
        "useroaming", "usersh",
    }
)  # fmt: skip

#: The system-wide ssh_config (ssh's _PATH_HOST_CONFIG_FILE), read after the user's file
#: (its values count only where the user's set none) unless files are named, as ``ssh -F``
#: names one. Read where it is used, so that tests can point it elsewhere; its directory is
#: where its relative Include paths lead (ssh's SSHDIR).
SYSTEM_CONFIG = "/etc/ssh/ssh_config"

#: The user's ssh_config, read first when none is named.
USER_CONFIG = "~/.ssh/config"

#: ssh's READCONF_MAX_DEPTH: Includes nested deeper are refused.
MAX_INCLUDE_DEPTH = 16


class QuotedWord(str):
    """A word with an ``=`` that stood inside quotes: asyncssh's reader, which takes an
    ``=`` in a word of a ``Host`` or ``Match`` line for a separator (``Match host=x``, as
    ssh does), finds none in it, and the word stays whole, as in ssh."""

    __slots__ = ()

    def __contains__(self, part: object) -> bool:
        return part != "=" and str.__contains__(self, part)  # type: ignore[operator]

    def startswith(self, prefix: object, *args: object) -> bool:
        return prefix != "=" and str.startswith(self, prefix, *args)  # type: ignore[arg-type]

    def endswith(self, suffix: object, *args: object) -> bool:
        return suffix != "=" and str.endswith(self, suffix, *args)  # type: ignore[arg-type]


#: The pieces of a line as ssh's argv_split (misc.c) reads them: blanks (only spaces and
#: tabs part words); a run of plain characters; a backslash escaping a backslash, a quote or
#: (outside quotes) a space; any other backslash, kept as it is (``DOMAIN\user``); a text in
#: double or single quotes, in which a backslash escapes a backslash or either quote (and
#: only those) and ``#`` is a letter; a quote that no other closes.
_PIECE = re.compile(
    r"""(?P<blank>[ \t]+)
    | (?P<plain>[^ \t"'\\]+)
    | \\(?P<escaped>[\\"' ])
    | (?P<backslash>\\)
    | "(?P<double>(?:[^"\\]|\\.)*)"
    | '(?P<single>(?:[^'\\]|\\.)*)'
    | (?P<unclosed>["'])""",
    re.VERBOSE | re.DOTALL,
)

#: A backslash escape inside quotes.
_QUOTED_ESCAPE = re.compile(r"""\\([\\"'])""")


def split_words(line: str) -> list[str]:
    """The words of an ssh_config value as ssh splits them (argv_split): parted by spaces and
    tabs, a word starting with ``#`` ending the line (``IdentityFile ~/.ssh/work  # Bob's
    key``), quotes and backslashes read as ssh reads them (:data:`_PIECE`; not as a shell
    does: ``DOMAIN\\u`` keeps its backslash); a word with an ``=`` inside quotes is a
    :class:`QuotedWord`. Raises ValueError on an unclosed quote, as ssh refuses the line."""
    words = _plain_words(line)
    return _split_quoted(line) if words is None else words


def _plain_words(line: str) -> list[str] | None:
    """:func:`split_words` for most lines, read for every host: those without a quote or
    backslash, split by str.split in C, exact since a printable line has no blank but the
    space (its tabs made spaces first); None for any other line."""
    if '"' in line or "'" in line or "\\" in line or not line.replace("\t", " ").isprintable():
        return None
    words = line.split()
    if "#" in line:
        for i, word in enumerate(words):
            if word.startswith("#"):
                return words[:i]
    return words


def _split_quoted(line: str) -> list[str]:
    """:func:`split_words` for a line with quotes or backslashes, a regular expression's
    pieces at a time (a Python loop per character cost most of a host's config reading)."""
    words: list[str] = []
    parts: list[str] | None = None  # the word being read
    quoted_equals = False
    for piece in _PIECE.finditer(line):
        kind = piece.lastgroup
        if kind == "blank":
            if parts is not None:
                joined = "".join(parts)
                words.append(QuotedWord(joined) if quoted_equals else joined)
                parts, quoted_equals = None, False
            continue
        text = piece[0]
        if parts is None:
            if kind == "plain" and text.startswith("#"):
                return words  # a comment: only at the start of a word
            parts = []
        if kind == "plain" or kind == "backslash":
            parts.append(text)
        elif kind == "escaped":
            parts.append(text[1])
        elif kind == "unclosed":
            raise ValueError(f'unclosed quote ({text}), which ssh refuses too ("invalid quotes")')
        else:
            inside = text[1:-1]
            quoted_equals = quoted_equals or "=" in inside
            parts.append(_QUOTED_ESCAPE.sub(r"\1", inside) if "\\" in inside else inside)
    if parts is not None:
        joined = "".join(parts)
        words.append(QuotedWord(joined) if quoted_equals else joined)
    return words


#: A line's unquoted keyword (up to blanks, ``=`` or a quote) and the rest of it.
_KEYWORD = re.compile(r'[ \t]*([^ \t="]*)(.*)', re.DOTALL)


def keyword_and_rest(line: str) -> tuple[str, str] | None:
    """A line's keyword and the text of its value, as readconf.c's strdelim takes the
    keyword: up to blanks or one ``=`` between them (``User=a=b`` is User ``a=b``, ``User =
    =x`` User ``=x``); or in double quotes, the value then starting right after the closing
    quote (``"User"=x`` is User ``=x``). None for a line ssh drops as if it were blank (a
    quote opened before the keyword that does not close); a ValueError for a quote right
    after an unquoted keyword (``User"x"``), where ssh reads a keyword ``userx`` and refuses
    the file."""
    if line.lstrip(" \t").startswith('"'):
        text = line.lstrip(" \t")
        close = text.find('"', 1)
        return None if close < 0 else (text[1:close], text[close + 1 :])
    found = _KEYWORD.fullmatch(line)
    assert found is not None  # the pattern matches any text
    keyword, rest = found[1], found[2]
    if rest.startswith('"'):
        raise ValueError(f"a quote right after the keyword {keyword!r}, which ssh refuses too")
    rest = rest.lstrip(" \t")
    return keyword, rest[1:].lstrip(" \t") if rest.startswith("=") else rest


def split_line(line: str) -> list[str]:
    """A whole ssh_config line as ssh splits it: its keyword, up to blanks or an ``=``
    (readconf.c's strdelim, which takes one ``=`` between keyword and value: ``User=a=b`` is
    User ``a=b``, ``User = =x`` User ``=x``), then its value's words (:func:`split_words`).
    Where asyncssh's reader would cut a word that ssh keeps whole, the word is a
    :class:`QuotedWord`: one with an ``=`` on a ``Host`` line (ssh's one pattern ``a=b``,
    two for asyncssh), and the first of a value that starts with ``=`` (which asyncssh
    dropped); no other word of a line but a ``Match`` line is one.

    A ``Match`` line is split as every other line, as OpenSSH 9.9 and later split it
    (:func:`_match_words`). Releases up to 9.8 split its criteria with an older splitter
    of their own (strdelim: double quotes only, every backslash kept, a single quote a
    letter, an ``=`` a separator), so a criterion quoted with single quotes or
    backslashes reads otherwise there (the installed ssh refuses ``Match exec 'true'``)."""
    if "=" not in line:
        words = _plain_words(line)
        if words is not None:
            return words  # the keyword is the first word, as no quote or = is in it
    found = keyword_and_rest(line)
    if found is None:
        return []  # a line ssh drops (asyncssh skips a line without words)
    keyword, rest = found
    words = split_words(rest)
    lowered = keyword.lower()
    if lowered == "host":
        words = [QuotedWord(word) if "=" in word else word for word in words]
    elif lowered == "match":
        words = _match_words(words)
    elif words:
        # Plain str again, so that no QuotedWord ends up among the values asyncssh keeps.
        words = [str(word) for word in words]
        if words[0].startswith("="):
            words[0] = QuotedWord(words[0])
    return [keyword, *words] if keyword or words else []


#: The Match criteria that take no argument.
MATCH_ALONE = ("all", "canonical", "final")


def _match_words(words: list[str]) -> list[str]:
    """A Match line's words, each argument of a criterion a :class:`QuotedWord` if it has an
    ``=``: OpenSSH 9.9 takes the word after a criterion whole (``Match exec test\\ 1\\ =\\ 1``
    runs ``test 1 = 1``), where asyncssh cut every word of the line at its ``=``. A
    criterion word is still cut there (``host=box`` is ``host box``, as ssh up to 9.8
    reads it); its argument is then the word's own."""
    marked: list[str] = []
    argument = False  # the word is the argument of the criterion before it
    for word in words:
        if argument:
            marked.append(QuotedWord(word) if "=" in word else word)
            argument = False
            continue
        marked.append(word)
        criterion = word.lower().removeprefix("!")
        argument = criterion not in MATCH_ALONE and "=" not in word
    return marked


def host_block_applies(name: str, patterns: Sequence[str]) -> bool:
    """Whether a ``Host`` line of ``patterns`` applies to the host ``name``, as ssh decides
    (readconf.c's Host: match_pattern on each word): each word is one pattern (``*`` and
    ``?`` wildcards, compared case and all), a comma in it a character like any other, so
    ``Host a,b`` applies to neither ``a`` nor ``b`` (a ``Match host`` list is parted by
    commas; a ``Host`` list by blanks); one starting with ``!`` that matches makes the line
    apply to none. asyncssh took a ``Host`` line's words for one comma-separated list."""
    from asyncssh.pattern import WildcardPattern

    applies = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if WildcardPattern(pattern[1:] if negated else pattern).matches(name):
            if negated:
                return False
            applies = True
    return applies


def others_may_change(st: os.stat_result) -> bool:
    """Whether another user than this one may change the file of ``st``, as ssh judges it
    (secure_permissions): owned by someone else than this user or root, writable by all,
    or writable by a group with another member than this user. (Upstream ssh refuses any
    group-writable file; Debian's, like ours, a group of one, the user's own, as with a
    umask of 002.)"""
    uid = os.getuid()
    if st.st_uid not in (0, uid) or st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    return not _group_is_only(st.st_gid, st.st_uid, uid)


@functools.cache
def _group_is_only(gid: int, owner_uid: int, uid: int) -> bool:
    """Whether the group ``gid`` has no member but this user ``uid`` (the file's owner is
    ``owner_uid``: this user or root), and someone is in it. Asked for every group-writable
    file (umask 002) of every host's walk, and it reads the whole passwd database (slow
    where that is a directory service): answered once per process."""
    try:
        group = grp.getgrgid(gid)
        owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        return False
    primary = [entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == gid]
    if any(member != uid for member in primary):
        return False
    if group.gr_mem and group.gr_mem != [owner]:
        return False
    return bool(primary or group.gr_mem)


def nested_includes_error(host: str, configs: str) -> ConfigError:
    """The error for Includes nested deeper than ssh follows them (one includes itself)."""
    return ConfigError(
        "ssh_config: too many nested Include directives (one includes itself?)",
        host=host,
        path=configs,
        hint="fix the Include lines of the ssh_config",
    )


def unreadable_include_error(path: str, reason: str, host: str, configs: str) -> ConfigError:
    """The error for a file an Include line names that cannot be opened, as ssh stops on
    it ("Can't open user config file")."""
    return ConfigError(
        f"cannot read the ssh_config file {path!r}, which an Include line reads: {reason}",
        host=host,
        path=path,
        hint=f"let this user read it, or fix the Include line in {configs}",
    )


def others_may_change_error(path: str, host: str, included_by: str | None) -> ConfigError:
    """The error for an ssh_config that another user may change (``included_by``: the file
    and line of the Include that reads it)."""
    which = "the ssh_config" if included_by is None else f"the ssh_config file {path!r}"
    where = "" if included_by is None else f", which the Include line {included_by} reads"
    return ConfigError(
        f"bad owner or permissions on {which}{where}: another user may change it, and its "
        "ProxyCommand or Match exec lines would run as you (ssh refuses it too)",
        host=host,
        path=path,
        hint=f"chmod go-w {shlex.quote(path)} (and chown it to yourself)",
    )


class FilesRead(Struct, frozen=True):
    """What a walk of the ssh_config files read (:func:`check_config_files`), for a cache of
    what they say to tell whether they changed since: every file it opened or tried, in
    order; every Include pattern (expanded) with the files it matched; and whether a line
    makes a reading of them depend on more than the files, the host and the environment
    (``volatile``: a ``Match exec`` command, whose answer may change at any time, or
    ``Match localnetwork``)."""

    files: tuple[str, ...]
    includes: tuple[tuple[str, tuple[str, ...]], ...]
    volatile: bool


#: Match criteria whose answer is not the files' (a command's, the network's).
_VOLATILE_CRITERIA = frozenset({"exec", "localnetwork"})


class _Walk(Struct):
    """One walk of the files, with what ssh would know of IgnoreUnknown at each line."""

    host: str
    configs: str
    #: What was read (:class:`FilesRead`).
    files: list[str] = field(default_factory=list)
    includes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    volatile: bool = False
    #: The IgnoreUnknown values read so far that may be the one ssh goes by (the first in
    #: a block that applies): every one up to the first in a block that always applies.
    ignoring: list[str] = field(default_factory=list)
    settled: bool = False

    def file(
        self,
        path: str,
        check: bool,
        included_by: str | None,
        depth: int,
        always: bool = True,
        system: bool = False,
    ) -> None:
        """Read ``path`` (``check``: refuse it if others may change it); ``always``: whether
        the Include that reads it (if any) applies to every host; ``system``: whether it is
        the system-wide file or one it Includes (whose Include paths ssh reads otherwise)."""
        self.files.append(path)
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed below; fstat needs it open)
        except OSError as exc:
            # A named file is reported where it is read; ssh skips a file gone since the
            # glob, and reads nothing from a directory an Include matched.
            if included_by is None or exc.errno in (errno.ENOENT, errno.EISDIR):
                return
            raise unreadable_include_error(
                path, exc.strerror or str(exc), self.host, self.configs
            ) from exc
        with handle:
            if check and others_may_change(os.fstat(handle.fileno())):
                raise others_may_change_error(path, self.host, included_by)
            data = handle.read()
        text = data.decode("utf-8", "surrogateescape")
        self.lines(path, text.split("\n"), depth, always, system)

    def lines(
        self, path: str, lines: list[str], depth: int, inherited: bool, system: bool = False
    ) -> None:
        unknown: list[tuple[int, str]] = []
        always = inherited  # the line is in a block that applies to every host
        for number, line in enumerate(lines, 1):
            try:
                found = keyword_and_rest(line.strip())
            except ValueError:
                found = None  # asyncssh stops on it where it reads it, naming the line
            keyword = found[0].lower() if found else ""
            if not keyword or keyword.startswith("#"):
                continue
            rest = found[1] if found else ""
            if keyword in ("host", "match", "include", "ignoreunknown"):
                try:
                    words = split_words(rest)
                except ValueError:
                    words = []  # unclosed quote: asyncssh stops on it where it reads it
                if keyword == "host":
                    # Each word one pattern, a comma in it a letter (host_block_applies).
                    always = (
                        inherited and "*" in words and not any(p.startswith("!") for p in words)
                    )
                elif keyword == "match":
                    problem = match_line_problem(words)
                    if problem is not None:
                        raise _match_line_error(problem, (path, number), self.host)
                    # Any word: an argument taken for a criterion only keeps a reading
                    # from being cached. A criterion may be joined to its argument by an
                    # ``=`` (``exec="cmd"``), as ssh and the reading part them.
                    self.volatile = self.volatile or any(
                        word.lower().lstrip("!").partition("=")[0] in _VOLATILE_CRITERIA
                        for word in words
                    )
                    always = inherited and [word.lower() for word in words] == ["all"]
                elif keyword == "include":
                    if "" in words:
                        raise _empty_include_error((path, number), self.host)
                    self.include(words, (path, number), always, depth, system)
                elif not self.settled:
                    self.ignoring.extend(words[:1])
                    self.settled = always
            elif keyword not in KEYWORDS and not self.ignored(keyword):
                unknown.append((number, keyword))
            elif (
                ('""' in rest or "''" in rest)
                and keyword in KEYWORDS  # one IgnoreUnknown names: ssh takes it, empty or not
                and keyword not in EMPTY_VALUE_TAKEN
            ):
                try:
                    words = split_words(rest)
                except ValueError:
                    words = []  # unclosed quote: asyncssh stops on it where it reads it
                if words[:1] == [""]:
                    raise _empty_value_error(keyword, (path, number), self.host)
        if unknown:
            raise _unknown_error(path, unknown, self.host)

    def include(
        self, patterns: list[str], where: tuple[str, int], always: bool, depth: int, system: bool
    ) -> None:
        """The files of an Include line (``where``: its file and number), as ssh finds them:
        a relative path is under ``~/.ssh``, or for the system-wide file under its directory,
        where a ``~`` path is refused."""
        line = f"{where[0]} line {where[1]}"
        for pattern in patterns:
            if system and pattern.startswith("~"):
                raise bad_include_path_error(pattern, where, self.host)
            if not pattern.startswith(("/", "~")):
                base = os.path.dirname(SYSTEM_CONFIG) if system else "~/.ssh"
                pattern = f"{base}/{pattern}"
            expanded = os.path.expanduser(pattern)
            matched = include_paths(expanded)
            self.includes.append((expanded, tuple(matched)))
            for path in matched:
                if depth >= MAX_INCLUDE_DEPTH:
                    raise nested_includes_error(self.host, self.configs)
                self.file(path, True, line, depth + 1, always, system)

    def ignored(self, keyword: str) -> bool:
        from asyncssh.pattern import WildcardPatternList

        return any(WildcardPatternList(value.lower()).matches(keyword) for value in self.ignoring)


def _empty_value_error(keyword: str, where: tuple[str, int], host: str) -> ConfigError:
    return ConfigError(
        f'ssh_config line {where[1]}: {keyword} "": an empty value, which ssh refuses in any '
        'block, whether it applies or not ("Missing argument"); asyncssh took it',
        host=host,
        path=where[0],
        hint=f"give {keyword} a value, or remove the line",
    )


def match_line_problem(words: Sequence[str]) -> str | None:
    """What ssh refuses in a Match line (its value's ``words``) before it evaluates anything
    (readconf.c's match_cfg_line), said with ssh's words, or None: an empty criterion (which
    OpenSSH 9.2 refuses first, and takes for the line's end later, and 9.9 refuses anywhere;
    asyncssh failed on it with an IndexError) or a first one starting with ``#`` ("One or
    more attributes required"); a criterion (but ``all``, ``canonical``, ``final``) with
    nothing after it, an empty argument (``exec ""``) or one starting with ``#`` (``host
    "#x"``): "Missing Match criteria". A later criterion starting with ``#`` (quoted: an
    unquoted one is a comment already) ends the line, as there. An unquoted ``=`` parts a
    criterion from its argument, as there (``host=box``, ``host= box``)."""
    parts: list[str] = []
    for word in words:
        if isinstance(word, QuotedWord) or "=" not in word:
            parts.append(word)
        else:
            criterion, _, argument = word.partition("=")
            parts += [part for part in (criterion, argument) if part]
    i = 0
    while i < len(parts):
        criterion = parts[i]
        if criterion.startswith("#") and i > 0:
            return None  # ssh ends the line there, as at a comment
        if not criterion or criterion.startswith("#"):
            return f'no criterion before {criterion!r} ("One or more attributes required")'
        if criterion.lower().removeprefix("!") in MATCH_ALONE:
            i += 1
            continue
        if i + 1 >= len(parts) or not parts[i + 1] or parts[i + 1].startswith("#"):
            name = criterion.removeprefix("!")
            return (
                f"{criterion} has no argument (empty, or starting with #): "
                f'"Missing Match criteria for {name}"'
            )
        i += 2
    return None


def _match_line_error(problem: str, where: tuple[str, int], host: str) -> ConfigError:
    return ConfigError(
        f"ssh_config line {where[1]}: Match: {problem}, which ssh refuses in any block; "
        "asyncssh took it",
        host=host,
        path=where[0],
        hint="give each criterion of that Match line its argument, or remove the criterion",
    )


def _empty_include_error(where: tuple[str, int], host: str) -> ConfigError:
    return ConfigError(
        f'ssh_config line {where[1]}: Include "": an empty path, which ssh refuses in any '
        'block ("keyword include empty argument"); asyncssh read nothing for it',
        host=host,
        path=where[0],
        hint="give the Include line a path, or remove the empty one",
    )


def _unknown_error(path: str, unknown: list[tuple[int, str]], host: str) -> ConfigError:
    lines = ", ".join(str(number) for number, _ in unknown)
    names = ", ".join(repr(keyword) for _, keyword in unknown)
    plural = "s" if len(unknown) > 1 else ""
    return ConfigError(
        f"ssh_config line{plural} {lines}: unknown option{plural} {names}; ssh refuses "
        'the whole file for it ("Bad configuration option")',
        host=host,
        path=path,
        hint="fix or remove the line, or name the option in an IgnoreUnknown line above it "
        "(IgnoreUnknown " + ",".join(keyword for _, keyword in unknown) + ")",
    )


def include_paths(pattern: str) -> list[str]:
    """The paths an Include ``pattern`` (``~`` expanded, made absolute) names, as ssh's
    glob(3) finds them: sorted (as strings, the C locale's order), and a name starting with
    ``.`` matched only by a pattern whose part starts with ``.`` too, so ``conf.d/*`` skips
    an editor's ``.host.swp`` or ``.#host`` (``conf.d/.*`` reads them). :func:`glob.glob`
    follows both rules; :meth:`pathlib.Path.glob`, which asyncssh used, matched dot files.
    The reading of both this walk and asyncssh's (see ``configreader``) goes through here."""
    return sorted(glob.glob(pattern))


class SystemWide(list[str]):
    """The ssh_config files read when none is named (:func:`default_files`): ``system``, if
    not None, is the last of them, the system-wide file. asyncssh is given this list as is;
    its reader (see ``configreader``) takes the relative Include paths of that file, and of the
    files it Includes, from the file's directory, as ssh does."""

    def __init__(self, paths: Sequence[str], system: str | None) -> None:
        super().__init__(paths)
        self.system = system


def default_files() -> SystemWide:
    """The ssh_config files ssh reads when given no ``-F``: the user's :data:`USER_CONFIG`,
    then the system-wide :data:`SYSTEM_CONFIG`, each if it is a file this user may read
    (ssh skips either, missing or unreadable, without a word)."""
    user, system = os.path.expanduser(USER_CONFIG), SYSTEM_CONFIG
    readable = [path for path in (user, system) if _readable_file(path)]
    return SystemWide(readable, system if system in readable else None)


def _readable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def bad_include_path_error(pattern: str, where: tuple[str, int], host: str) -> ConfigError:
    """The error for a ``~`` path in an Include line of the system-wide ssh_config (or of a
    file it Includes), which ssh refuses ("bad include path"): whose home would it be?"""
    return ConfigError(
        f"ssh_config line {where[1]}: bad include path {pattern!r}: the system-wide "
        "ssh_config may not Include a path under ~ (ssh refuses it)",
        host=host,
        path=where[0],
        hint="give an absolute path, or one relative to "
        f"{os.path.dirname(SYSTEM_CONFIG)}, in that Include line",
    )


def check_config_files(
    paths: Sequence[str], host: str, configs: str, system: str | None = None
) -> FilesRead:
    """Walk the ssh_config files ``paths`` (expanded), then the system-wide file ``system``
    if given, and every file their Include lines name, as ssh reads them before it uses
    any, and raise this host's :class:`ConfigError` for what ssh refuses there (see the
    module's docstring). ``configs`` names the files in errors. The user's
    ``~/.ssh/config`` is checked for others' write access, as ssh checks it when it reads it
    by default (another file, given as ``ssh -F`` gives it, is not, nor is the system-wide
    file: ssh trusts what root keeps there); an Include'd file always is. A file named that
    cannot be opened is left to the reader that reports it. Returns what it read
    (:class:`FilesRead`)."""
    user_config = os.path.realpath(os.path.expanduser(USER_CONFIG))
    walk = _Walk(host, configs)
    for path in paths:
        walk.file(path, os.path.realpath(path) == user_config, None, 0)
    if system is not None:
        walk.file(system, False, None, 0, system=True)
    return FilesRead(tuple(walk.files), tuple(walk.includes), walk.volatile)


#: ssh's ``%`` tokens: one character after ``%``, or ``%`` at the end of the text.
_PERCENT_TOKEN = re.compile(r"%(.?)", re.DOTALL)


def ends_in_lone_percent(text: str) -> bool:
    """Whether ``text`` ends in a ``%`` that starts no token (``%%`` is one), on which
    ssh's expansion of tokens stops ("invalid format")."""
    return any(not found[1] for found in _PERCENT_TOKEN.finditer(text))


def match_exec_tokens(
    *,
    host: str,
    original_host: str,
    port: int,
    remote_user: str,
    local_user: str,
    key_alias: str | None,
    proxy_jump: str | None,
) -> dict[str, str]:
    """The values of the tokens ssh expands in a ``Match exec`` command (readconf.c's
    expansion for it: %C %L %d %h %k %l %n %p %r %u %i %j and %%), from the configuration
    read up to the Match line: ``host`` is the HostName so far (its %h expanded), else the
    name asked for (``original_host``); ``key_alias`` the HostKeyAlias; ``proxy_jump`` the
    ProxyJump line's value, of which %j is the last hop's host name alone
    (:func:`jump_host`). ``%d`` is ``$HOME``, as ``~`` is everywhere here."""
    local = socket.gethostname()
    jump = jump_host(proxy_jump)
    return {
        "C": connection_hash(local, host, str(port), remote_user, jump),
        "L": local.split(".")[0],
        "d": os.path.expanduser("~"),
        "h": host,
        "k": key_alias or host,
        "l": local,
        "n": original_host,
        "p": str(port),
        "r": remote_user,
        "u": local_user,
        "i": str(os.getuid()),
        "j": jump,
    }


def connection_hash(local: str, host: str, port: str, remote_user: str, jump: str = "") -> str:
    """ssh's %C (ssh_connection_hash): the SHA-1 of this machine's host name, the host name,
    port and user, and the jump host (added in OpenSSH 9.6; empty without one, so the same
    hash as older releases give then). The one %C of a config, in ``Match exec`` as in
    IdentityFile, CertificateFile and UserKnownHostsFile: 9.6's, as %j is there too (ssh
    expands no %C in a ProxyCommand). The jump host is one ssh takes: none when a
    ProxyCommand came first, or was given instead (the inventory's)."""
    connection = f"{local}{host}{port}{remote_user}{jump}"
    return hashlib.sha1(connection.encode("utf-8", "surrogateescape")).hexdigest()


#: ASCII capitals to small letters, as C's tolower() maps them in ssh (not other letters).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lowercase_host(name: str) -> str:
    """``name`` with its ASCII letters in lower case, as ssh lowercases the host name it
    has once it has read its config (ssh.c's lowercase(host)): the name it connects to and
    looks up in known_hosts, and its HostKeyAlias; and as it compares a host name with a
    ``Match host`` pattern or a known_hosts pattern (match.c's match_hostname)."""
    return name.translate(_ASCII_LOWER)


def jump_hop(hop: str) -> tuple[str | None, str, int | None]:
    """One hop of a ProxyJump value as ssh reads it (readconf.c's parse_jump, through
    parse_ssh_uri or parse_user_host_port): ``[user@]host[:port]``, the user ended by the
    last ``@``, an IPv6 address in brackets (``[::1]:2222``); or an ``ssh://`` URI
    (:func:`_uri_hop`). Returns (user or None, host, port or None); an empty host, or a port
    that is not a number from 1 to 65535, is a ValueError. Looser than ssh in places (the
    host of the first form is not checked), stricter in others (a port is never a service
    name nor signed, ``+22``; a URI's user must decode to UTF-8; a user the connection
    cannot send, :func:`user_name_problem`, a control character in it above all, is
    refused): what both read, they read alike."""
    text = hop.strip()
    if text.startswith("ssh://"):
        user, host, port = _uri_hop(text)
    else:
        name, _, rest = text.rpartition("@")
        found = _JUMP_HOST_PORT.fullmatch(rest)
        named = None if found is None else (found["bracketed"] or found["host"])
        port = int(found["port"]) if found is not None and found["port"] else None
        if not named or (port is not None and not 0 < port < 65536):
            raise ValueError(f"bad host or port in {rest!r}")
        user, host = name or None, named
    problem = None if user is None else user_name_problem(user)
    if problem is not None:
        # ssh 9.2 takes it, and puts it unquoted in the "ssh -l USER -W ..." command it
        # runs for the hop, where a newline ends the command; OpenSSH 10.1 refuses a control
        # character in a user name given that way (CVE-2025-61984).
        raise ValueError(
            f"bad user name {user!r}: {problem}; the SSH library remote-sync uses cannot "
            "send it, and OpenSSH 10.1 and later refuse a control character in it"
        )
    return user, host, port


def user_name_problem(user: str) -> str | None:
    """Why the SSH library cannot send ``user`` as a login name, or None: asyncssh puts user
    names through SASLprep (RFC 4013), which refuses a control character (a tab, a
    newline), an unassigned code point and a few others, which ssh sends as they are (a
    User line's) or, from OpenSSH 10.1, refuses too (a control character in a user name
    from its command line, a ProxyJump hop's among them)."""
    from asyncssh.saslprep import SASLPrepError, saslprep

    try:
        saslprep(user)
    except SASLPrepError as exc:
        return str(exc)
    return None


#: A hop's ``host[:port]`` or ``[ipv6][:port]``.
_JUMP_HOST_PORT = re.compile(
    r"(?:\[(?P<bracketed>[^\]]*)\]|(?P<host>[^:/\[\]]*))(?::(?P<port>[0-9]+))?"
)


def _uri_hop(uri: str) -> tuple[str | None, str, int | None]:
    """The hop of the URI ``uri`` (``ssh://...``) as ssh reads it (misc.c's parse_uri,
    checked against OpenSSH 9.2): ``[user[;params]@]host[:[port]][/]``. The user is ended by
    the first ``@``, its ``;params`` dropped, and it is URL-decoded (``%40`` is ``@``, ``+`` a
    blank); the host is not, and must be a domain name or IPv4 address (valid_domain:
    letters, digits, ``-_.``, no ``..``, no leading ``-``; so no IPv6 address, in brackets
    or not; one trailing dot dropped). A path, an empty user, or a ``%`` in it not followed
    by two hex digits (or giving a NUL) is a ValueError, as ssh refuses the line ("Invalid
    ProxyJump")."""
    user = None
    info, at, rest = uri.removeprefix("ssh://").partition("@")
    if at:
        name = info.split(";", 1)[0]  # "Just ignore connection params for now" (ssh)
        if not name or _BAD_URL_ESCAPE.search(name):
            raise ValueError(f"bad user name {info!r}: empty, or a % not two hex digits")
        try:  # a user that is not UTF-8 could not be sent (asyncssh takes text): refused
            user = urllib.parse.unquote_plus(name, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"bad user name {info!r}: not UTF-8 once decoded") from None
    else:
        rest = info
    # hpdelim2: the host up to ':' or '/', or a bracketed one up to its ']'.
    if rest.startswith("["):
        close = rest.find("]")
        host, tail = (rest[1:close], rest[close + 1 :]) if close > 0 else ("", "[")
    else:
        cut = min((i for i in (rest.find(":"), rest.find("/")) if i >= 0), default=len(rest))
        host, tail = rest[:cut], rest[cut:]
    port_text, path = "", tail[1:]
    if tail.startswith(":"):
        port_text, slash, path = tail[1:].partition("/")
        if not port_text and slash:
            raise ValueError("empty port before the /")
    elif tail and not tail.startswith("/"):
        raise ValueError(f"{tail!r} after the host")
    if path:
        raise ValueError(f"a path, {path!r}, after the host")
    if _DOMAIN.fullmatch(host) is None or ".." in host:
        raise ValueError(f"bad host name {host!r} (a URI takes a domain name or IPv4 address)")
    port = (
        int(port_text) if _DIGITS.fullmatch(port_text) else None
    )  # no full-width digits, no "+22"
    if port_text and (port is None or not 0 < port < 65536):
        raise ValueError(f"bad port {port_text!r}")
    return user, host.removesuffix("."), port


#: A port as written: ASCII digits only (str.isdigit also takes other scripts' digits).
_DIGITS = re.compile(r"[0-9]+")

#: A ``%`` of a URI's user that is no escape ssh decodes: not two hex digits, or a NUL.
_BAD_URL_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")

#: A host name ssh takes in a URI (misc.c's valid_domain), ASCII as in its C locale.
_DOMAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)


def jump_host(proxy_jump: str | None) -> str:
    """The host ssh keeps of a ProxyJump value (readconf.c's parse_jump: its jump_host), %j
    and part of %C: the host name of the last hop alone (:func:`jump_hop`); ``""`` for none
    or ``none``. ``admin@bastion:2222`` is ``bastion``, ``a,u@[::1]:22`` is ``::1``."""
    if proxy_jump is None or proxy_jump.strip().lower() == "none":
        return ""
    try:
        return jump_hop(proxy_jump.rsplit(",", 1)[-1])[1]
    except ValueError:
        return ""  # the connection refuses the hop, naming it (jumps.jump_endpoints)


#: The characters a token's value may hold: none the shell reads as more than a word's
#: letter, inside single or double quotes or outside them (no quote, blank, ``$``, `` ` ``,
#: backslash, ``;``, ``~``, glob or redirection). Letters and digits of other scripts too
#: (``[^\W_]`` past ASCII: what :meth:`str.isalnum` takes): ssh takes non-ASCII host and
#: user names from its command line (OpenSSH 9.6's valid_hostname and valid_ruser refuse
#: only ASCII punctuation, blanks and control characters), and in UTF-8 every byte of such
#: a letter is above 0x7f, which no shell reads as anything but a letter.
_SAFE_VALUE = re.compile(r"(?:[A-Za-z0-9@%+=:,./_-]|[^\x00-\x7f\W_])*")

#: What each checked token's value is, for the error that refuses one.
_TOKEN_NAMES = {
    "h": "host name",
    "k": "host key alias",
    "n": "host name",
    "p": "port",
    "r": "remote user name",
    "j": "ProxyJump host",
}


#: The tokens of this machine's own values (its home, host name, user, user id), which ssh
#: puts in as they are and so does this: no inventory or command line sets them.
_LOCAL_TOKENS = frozenset("dlLui")


class UnsafeTokenValue(ValueError):
    """A ``Match exec`` token whose value holds a character the shell could read as code
    (:func:`expand_match_exec`); ``hint`` says what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def expand_match_exec(command: str, tokens: Mapping[str, str]) -> str:
    """``command`` with its ``%`` tokens replaced by ``tokens``' values, as ssh expands a
    ``Match exec`` command: each value put in as it is, so that the shell runs what ssh
    runs. ``%%`` is ``%``.

    A value of the host to reach (%h %n %k %r %p %j) goes in only if it holds nothing but
    letters, digits and ``@%+=:,./_-`` (every host name and the usual user names): such a
    value is one word's text for the shell wherever the token stands, in single quotes, in
    double quotes or outside them. Any other raises :class:`UnsafeTokenValue`
    (:func:`_checked_value`). ssh puts the values in unchecked, but refuses (since OpenSSH
    9.6) a user name with shell characters given on its command line; ours come from the
    inventory and the command line too, and quoting a value cannot help: the user's own
    quotes around the token would cancel ours, and the value would be code. This machine's
    own values (%d %l %L %u %i, :data:`_LOCAL_TOKENS`) go in unchecked, as in ssh; %C is a
    hex digest.

    Raises ValueError for a token ssh does not expand there (ssh stops on it: "unknown
    key"). Either error names the command by its program alone (:func:`command_name`), as
    a ProxyCommand's do: its arguments may hold a secret (a token for a VPN check)."""
    return _expand_command(command, tokens, "Match exec", "the Match exec command")


def _expand_command(command: str, tokens: Mapping[str, str], label: str, named: str) -> str:
    """``command`` with its ``%`` tokens replaced by their values in ``tokens`` (``%%`` is
    ``%``), each checked by :func:`_checked_value`; a token not in ``tokens``, or a ``%`` at
    the end, is a ValueError (:func:`_no_such_token`). An error begins with ``label`` and the
    command's program (``Match exec test …``, :func:`command_name`), and its hint names the
    command ``named`` (``the Match exec command``)."""
    shown = command_name(command)
    where = f"{label} {shown}"

    def value(found: re.Match[str]) -> str:
        token = found[1]
        if token == "%":
            return "%"
        if token not in tokens:
            raise _no_such_token(label, shown, token, tokens)
        return _checked_value(token, tokens[token], where, named)

    return _PERCENT_TOKEN.sub(value, command) if "%" in command else command


def _checked_value(token: str, text: str, where: str, command: str) -> str:
    """``text``, the value of ``token`` to put in a command the shell runs, or an
    :class:`UnsafeTokenValue` when it is a value of the host to reach (not one of
    :data:`_LOCAL_TOKENS`) that holds a character outside :data:`_SAFE_VALUE`. ``where``
    begins the message (``Match exec test …``), ``command`` names the command in the hint
    (``the Match exec command``)."""
    if token in _LOCAL_TOKENS or _SAFE_VALUE.fullmatch(text) is not None:
        return text
    what = _TOKEN_NAMES.get(token, "value")
    raise UnsafeTokenValue(
        f"{where}: the {what} %{token} is {text!r}, which holds a character the shell "
        "could read as code; only letters, digits and @%+=:,./_- are put in a command",
        hint=f"use a {what} of letters, digits and @%+=:,./_- only, or take %{token} out "
        f"of {command}",
    )


def _no_such_token(where: str, shown: str, token: str, known: Iterable[str]) -> ValueError:
    """The error for ``token`` (after a ``%``; empty for a ``%`` ending the text) in the value
    of ``where`` (``shown``, as the error shows it), which ssh does not expand there: it
    stops on it ("unknown key", or "invalid format" for the ``%`` at the end)."""
    named = f"%{token}" if token else "a '%' at the end"
    return ValueError(
        f"{where} {shown}: {named} is no token ssh expands there (known: "
        + " ".join(f"%{name}" for name in sorted(known, key=str.lower))
        + " %%)"
    )


#: The tokens ssh expands in a ProxyCommand, besides ``%%`` (sshconnect.c's
#: expand_proxy_command, the same in 9.2 and 9.9): the host, the HostKeyAlias (else the name
#: asked for), the name asked for, the port and the remote user. None of this machine's
#: (%d %l %L %u %i), nor %C or %j, which ssh expands in IdentityFile and Match exec.
PROXY_COMMAND_TOKENS = ("h", "k", "n", "p", "r")


def expand_proxy_command(
    command: str,
    tokens: Mapping[str, str],
    label: str = "ProxyCommand",
    named: str = "the ProxyCommand",
) -> str:
    """``command``, a ProxyCommand, with ssh's tokens there (:data:`PROXY_COMMAND_TOKENS`,
    their values taken from ``tokens``, as :func:`match_exec_tokens` gives them once the
    config is read) and ``%%`` expanded, each value put in as it is, as ssh puts it. Any
    other token, or a ``%`` at the end, is a ValueError naming it, as ssh stops on it
    ("unknown key"). A ``${VAR}`` is left as it is, for the command to read, as ssh leaves
    it (it expands variables in paths, not in commands).

    Every one of those tokens is a value of the host to reach: one the shell could read as
    code is an :class:`UnsafeTokenValue`, as in ``Match exec`` (:func:`_checked_value`;
    a host name as typed, ``box$(id)``, went into ``nc %n 22`` and ran). The command is
    named by its program alone (:func:`command_name`): its arguments may hold a secret.
    An error begins with ``label`` (``ProxyCommand cloudflared …``) and its hint names the
    command ``named`` (``the ProxyCommand``), for a ProxyCommand given elsewhere than in an
    ssh_config (the inventory's proxy_command)."""
    known = {name: tokens[name] for name in PROXY_COMMAND_TOKENS}
    return _expand_command(command, known, label, named)


#: A shell variable assignment before a command's program (``TOKEN=x cloudflared ...``).
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def command_name(command: str) -> str:
    """How an error or a hint names the command ``command`` (a ProxyCommand, a ``Match
    exec`` command): its program,
    the first word that is no variable assignment, then ``…`` for whatever follows, or the
    command as it is when it is one word. Its arguments and assignments are left out: they
    may hold a password or a token (``sshpass -p SECRET ssh ...``, ``cloudflared access ssh
    --service-token-secret X``), and an error goes into JSON events, logs and cron's mail.
    (The whole command is logged at debug level when it is run.)"""
    words = command.split()
    program = next((word for word in words if _ASSIGNMENT.match(word) is None), "")
    if not program:
        return "…"
    return program if words == [program] else f"{program} …"
