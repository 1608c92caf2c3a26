"""Tests of remote_sync.inventory (and the format registry it builds on)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from remote_sync.errors import (
    AuthenticationError,
    ConfigError,
    HostKeyError,
    HostUnreachableError,
)
from remote_sync.formats import FORMATS, get_format
from remote_sync.globs import compile_globs
from remote_sync.inventory import (
    AdhocOptions,
    Host,
    Inventory,
    Source,
    adhoc_host,
    host_name_problem,
    load_inventory,
    normal_root,
    sanitize_host_name,
)
from remote_sync.ssh.endpoint import Endpoint


def write(tmp_path: Path, text: str, name: str = "inventory.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.path == str(path)
    return info.value


def assert_line(err: ConfigError, line: int) -> None:
    text = str(err)
    assert "inventory.toml" in text
    assert re.search(rf"\bline {line}\b", text), text


# --------------------------------------------------------------------------- formats


def test_formats_registry() -> None:
    assert set(FORMATS) == {"openclaw", "claude-code", "codex", "picoclaw", "pi", "jsonl"}
    openclaw_include = ("agents/*/sessions/**", "agents/*/sessions_archive/**")
    assert get_format("openclaw").include == openclaw_include
    assert get_format("codex").default_root == "~/.codex"
    assert get_format("jsonl").default_root is None
    assert get_format("jsonl").include == ()
    for spec in FORMATS.values():  # every built-in glob compiles
        compile_globs(spec.include + spec.exclude + spec.append_only)
    openclaw = compile_globs(get_format("openclaw").append_only)
    assert openclaw.match(b"agents/main/sessions/abc.jsonl.reset.2025-01-01")
    assert not openclaw.match(b"agents/main/sessions/sessions.json")
    # ClawPal's sibling archive directory, whose transcripts the reader reads, is mirrored
    # (and pulled by appends) too; other directories of an agent are not.
    included = compile_globs(get_format("openclaw").include)
    archived = b"agents/main/sessions_archive/abc.jsonl"
    assert included.match(archived) and openclaw.match(archived)
    assert not included.match(b"agents/main/agent/auth-profiles.json")


def test_unknown_format_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown format 'nope'") as info:
        get_format("nope")
    assert "claude-code" in info.value.hint


# --------------------------------------------------------------------------- loading

VALID = """
    # fleet inventory
    [defaults]
    ssh_config = "ssh/config"
    known_hosts = "~/.ssh/known_hosts"
    format = "openclaw"
    root = "~/.openclaw-prod"
    user = "agent"
    exclude = ["**/*.tmp"]

    [[hosts]]
    name = "pi-kitchen"
    address = "pi-kitchen"
    tags = ["edge", "home"]

    [[hosts]]
    name = "pi-kitchen-codex"
    address = "pi-kitchen"
    format = "codex"

    [[hosts]]
    name = "vps"
    address = "root@vps.example.net:2222"
    identity_file = ["keys/id_vps", "/abs/id", "~/.ssh/id_ed25519"]
    root = "/srv/agent/.openclaw"
    include = ["agents/main/sessions/**"]
    exclude = ["**/big/**"]
    host_key_policy = "accept-new"
    proxy_command = "ssh -W %h:%p bastion"
    compression = true
    tags = ["cloud"]

    [[hosts]]
    address = "box.lan"
    user = "me"
    port = 2200
    format = "jsonl"
    root = "/data/logs"
    include = ["*.jsonl"]
"""


def test_valid_inventory(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    inventory = load_inventory(path)
    assert inventory.path == path
    kitchen, codex, vps, box = inventory.hosts
    assert [h.name for h in inventory.hosts] == ["pi-kitchen", "pi-kitchen-codex", "vps", "box.lan"]

    # defaults apply
    ssh_config = str(tmp_path / "ssh" / "config")
    assert kitchen.endpoint == Endpoint(
        address="pi-kitchen",
        user="agent",
        ssh_config=(ssh_config,),
        known_hosts="~/.ssh/known_hosts",
    )
    assert kitchen.tags == ("edge", "home")
    assert kitchen.source == Source(
        format="openclaw",
        root="~/.openclaw-prod",
        include=("agents/*/sessions/**", "agents/*/sessions_archive/**"),
        exclude=("**/*.tmp",),
        append_only=("*.jsonl", "*.jsonl.reset.*", "*.jsonl.deleted.*"),
    )
    assert kitchen.source.start_points == ["agents"]

    # another format than [defaults]': its own root and include, but the user-wide excludes
    assert codex.source.format == "codex"
    assert codex.source.root == "~/.codex"
    assert codex.source.include == get_format("codex").include
    assert codex.source.exclude == ("**/*.tmp",)

    # per-host overrides; user and port from the address win over [defaults]
    assert vps.endpoint.address == "vps.example.net"
    assert vps.endpoint.user == "root"
    assert vps.endpoint.port == 2222
    assert vps.endpoint.identity_files == (
        str(tmp_path / "keys" / "id_vps"),
        "/abs/id",
        "~/.ssh/id_ed25519",
    )
    assert vps.endpoint.host_key_policy == "accept-new"
    assert vps.endpoint.proxy_command == "ssh -W %h:%p bastion"
    assert vps.endpoint.compression is True
    assert kitchen.endpoint.compression is None  # not set: the pool's default (off)
    assert vps.source.root == "/srv/agent/.openclaw"  # the remote root is never rewritten
    assert vps.source.include == ("agents/main/sessions/**",)
    assert vps.source.exclude == ("**/*.tmp", "**/big/**")
    assert vps.source.is_included(b"agents/main/sessions/a.jsonl")
    assert not vps.source.is_included(b"agents/main/sessions/big/a.jsonl")
    assert not vps.source.is_included(b"agents/main/sessions/a.tmp")
    assert not vps.source.is_included(b"agents/other/sessions/a.jsonl")
    assert vps.source.is_included(b"agents/main/sessions/x")
    assert vps.source.is_append_only(b"agents/main/sessions/a.jsonl")
    assert not vps.source.is_append_only(b"agents/main/sessions/sessions.json")

    # name defaults to the address; jsonl with root and include given
    assert box.endpoint == Endpoint(
        address="box.lan",
        user="me",
        port=2200,
        ssh_config=(ssh_config,),
        known_hosts="~/.ssh/known_hosts",
    )
    assert box.source.root == "/data/logs"
    assert box.source.start_points == ["."]


def test_the_readme_inventory_loads_as_it_says(tmp_path: Path) -> None:
    """The README's example: every key it shows is valid, and its two entries for one
    machine share a connection (they once did not: one had compression on)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme[readme.index("# inventory.toml") :]
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(example[: example.index("```")])
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "vps").write_text("")
    hosts = {h.name: h for h in load_inventory(inventory).hosts}
    assert hosts["pi-kitchen"].endpoint == hosts["pi-kitchen-claude"].endpoint
    far = hosts["vps-far"].endpoint
    assert (far.user, far.address, far.port, far.compression) == (
        "agent",
        "203.0.113.7",
        2222,
        True,
    )
    assert far.host_key_policy == "accept-new"
    assert far.identity_files == (str(tmp_path / "keys" / "vps"),)


def test_same_address_shares_an_equal_endpoint(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, VALID))
    kitchen, codex = inventory.hosts[:2]
    assert kitchen.endpoint == codex.endpoint
    assert hash(kitchen.endpoint) == hash(codex.endpoint)
    assert len({h.endpoint for h in inventory.hosts}) == 3


def test_same_machine_spelled_two_ways_gives_equal_endpoints(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(
        tmp_path,
        """
        [[hosts]]
        name = "a"
        address = "me@box:2222"
        identity_file = "keys/id"

        [[hosts]]
        name = "b"
        address = "box"
        user = "me"
        port = 2222
        identity_file = ["keys/id"]
        format = "claude-code"

        [[hosts]]
        name = "c"
        address = "box"
        user = "me"
        port = 2222
        """,
        name="conf/inv.toml",
    )
    a, b, c = load_inventory(path).hosts
    assert a.endpoint.identity_files == (str(tmp_path / "conf" / "keys" / "id"),)
    assert a.endpoint.ssh_config is None
    assert a.endpoint == b.endpoint  # one SSH connection for both
    assert a.source != b.source
    assert c.endpoint != a.endpoint  # other keys: a connection of its own


def test_relative_paths_are_relative_to_the_inventory_dir(tmp_path: Path) -> None:
    sub = tmp_path / "fleet"
    sub.mkdir()
    path = write(
        tmp_path,
        """
        [defaults]
        known_hosts = "known_hosts"
        ssh_config = ["ssh_config", "~/.ssh/config"]
        [[hosts]]
        name = "h"
        address = "h"
        identity_file = "keys/id"
        """,
        name="fleet/inventory.toml",
    )
    (host,) = load_inventory(path).hosts
    assert host.endpoint.known_hosts == str(sub / "known_hosts")
    assert host.endpoint.ssh_config == (str(sub / "ssh_config"), "~/.ssh/config")
    assert host.endpoint.identity_files == (str(sub / "keys" / "id"),)


def test_relative_inventory_path_gives_absolute_key_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[[hosts]]\naddress = "h"\nidentity_file = "id"\n')
    monkeypatch.chdir(tmp_path)
    (host,) = load_inventory("inventory.toml").hosts
    assert host.endpoint.identity_files == (str(tmp_path / "id"),)


def test_empty_inventory(tmp_path: Path) -> None:
    assert load_inventory(write(tmp_path, "# nothing yet\n")).hosts == []


def test_hosts_as_inline_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        hosts = [
          { name = "a", address = "a" },
          { name = "b", address = "b", port = "22" },
        ]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert_line(info.value, 3)
    assert "'port'" in str(info.value)


# --------------------------------------------------------------------------- bad inventories


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_inventory(tmp_path / "inventory.toml")
    assert "inventory.toml" in str(info.value)


def test_unknown_key_with_line_and_suggestion(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        """
        [defaults]
        format = "openclaw"

        [[hosts]]
        name = "one"
        address = "one"

        [[hosts]]
        name = "two"
        adress = "two"
        """,
    )
    assert_line(err, 10)
    assert "unknown key 'adress' in [[hosts]] #2" in str(err)
    assert "did you mean 'address'?" in str(err)


def test_unknown_key_in_defaults(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[defaults]\nformat = "codex"\nrot = "/x"\n')
    assert_line(err, 3)
    assert "did you mean 'root'?" in str(err)
    err = config_error(tmp_path, '[defaults]\ntags = ["x"]\n')
    assert_line(err, 2)
    assert "only be set per host" in str(err)


def test_unknown_table(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[hosts]]\naddress = "a"\n\n[host]\nx = 1\n')
    assert_line(err, 4)
    assert "unknown table 'host'" in str(err)
    assert "did you mean 'hosts'?" in str(err)
    err = config_error(tmp_path, '[[hosts]]\naddress = "a"\n[hosts.extra]\nx = 1\n')
    assert_line(err, 3)
    assert "unknown key 'extra'" in str(err)


def test_hosts_must_be_an_array_of_tables(tmp_path: Path) -> None:
    err = config_error(tmp_path, '# x\n[hosts]\naddress = "a"\n')
    assert_line(err, 2)
    assert "[[hosts]]" in str(err)


def test_duplicate_name_reports_the_second(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        """
        [[hosts]]
        name = "pi"
        address = "10.0.0.1"

        [[hosts]]
        address = "10.0.0.2"
        name = "pi"
        """,
    )
    assert_line(err, 7)
    assert "duplicate host name 'pi'" in str(err)
    assert "[[hosts]] #1, line 1" in str(err)


def test_duplicate_name_ignores_case(tmp_path: Path) -> None:
    err = config_error(
        tmp_path, '[[hosts]]\nname = "Pi"\naddress = "a"\n[[hosts]]\nname = "pi"\naddress = "b"\n'
    )
    assert_line(err, 5)


def test_duplicate_derived_name(tmp_path: Path) -> None:
    err = config_error(
        tmp_path, '[[hosts]]\naddress = "box"\n\n[[hosts]]\naddress = "box"\nformat = "codex"\n'
    )
    assert_line(err, 4)
    assert "name" in err.hint


def test_missing_address(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        """
        [[hosts]]
        name = "a"
        address = "a"
        [[hosts]]
        name = "b"
        tags = ["x"]
        """,
    )
    assert_line(err, 4)
    assert "no address" in str(err)


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ('port = "22"', 3, "must be an integer"),
        ("port = 22.0", 3, "must be an integer"),
        ("port = true", 3, "must be an integer"),
        ("port = 70000", 3, "outside 1..65535"),
        ("port = 0", 3, "outside 1..65535"),
        ('tags = "edge"', 3, "list of strings"),
        ('tags = [\n  "ok",\n  1,\n]', 5, "must be a string"),
        ("user = 7", 3, "must be a string"),
        ('user = ""', 3, "must not be empty"),
        ("identity_file = [1]", 3, "must be a string"),
        ('host_key_policy = "none"', 3, "accept-new"),
        ('compression = "yes"', 3, "must be true or false"),
        ('include = ["a/../b"]', 3, "'..'"),
        ('include = [\n  "ok/**",\n  "[z-a]",\n]', 5, "reversed"),
        ("include = []", 3, "nothing would be mirrored"),
        ('address = "me@box:99999"', 2, "bad port"),
        ('address = "@box"', 2, "empty user name"),
        ('address = "[::1]junk"', 2, "after the address"),
        ('name = " "', 3, "white space"),
        ('name = "pi "', 3, "white space"),
        ('format = "claude"', 3, "unknown format 'claude'"),
        ('user = "other"\naddress2 = "x"', 4, "unknown key 'address2'"),
    ],
)
def test_bad_values(tmp_path: Path, body: str, line: int, needle: str) -> None:
    text = '[[hosts]]\naddress = "me@box"\n' + body + "\n"
    if body.startswith("address"):
        text = "[[hosts]]\n" + body + "\n"
    err = config_error(tmp_path, text)
    assert_line(err, line)
    assert needle in str(err)


def test_user_contradicting_the_address(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[hosts]]\naddress = "me@box"\n\nuser = "you"\n')
    assert_line(err, 4)
    assert "contradicts" in str(err)


def test_unknown_format_in_defaults(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[defaults]\n\nformat = "nope"\n[[hosts]]\naddress = "a"\n')
    assert_line(err, 3)
    assert "unknown format 'nope'" in str(err)
    assert "openclaw" in err.hint


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("~/.openclaw/", "~/.openclaw"),
        ("~/", "~"),
        ("~pi//.openclaw/./", "~pi/.openclaw"),
        ("//srv/a/./b//", "/srv/a/b"),
        ("/", "/"),
        ("./", "."),
        ("/srv/link/../b/", "/srv/link/../b"),
        # A directory named "~" or "~bob" under the login directory is not a home.
        ("./~", "./~"),
        ("./~bob/x/", "./~bob/x"),
        (".//~", "./~"),
        ("a/~b", "a/~b"),
    ],
)
def test_a_root_has_one_spelling(given: str, normal: str) -> None:
    assert normal_root(given) == normal
    assert adhoc_host("box", root=given).source.root == normal


def test_jsonl_needs_root_and_include(tmp_path: Path) -> None:
    err = config_error(
        tmp_path, '[[hosts]]\naddress = "a"\n[[hosts]]\naddress = "b"\nformat = "jsonl"\n'
    )
    assert_line(err, 3)
    assert "root" in str(err)
    err = config_error(tmp_path, '[[hosts]]\naddress = "b"\nformat = "jsonl"\nroot = "/logs"\n')
    assert_line(err, 1)
    assert "include" in str(err)
    ok = write(
        tmp_path,
        '[defaults]\nformat = "jsonl"\nroot = "/logs"\ninclude = ["**/*.jsonl"]\n'
        '[[hosts]]\naddress = "b"\n',
    )
    (host,) = load_inventory(ok).hosts
    assert (host.source.root, host.source.include) == ("/logs", ("**/*.jsonl",))


@pytest.mark.parametrize(
    "name", ["../x", "a/b", ".", "..", ".hidden", "", "tab\there", "x" * 256, "é" * 128]
)
def test_bad_host_names(tmp_path: Path, name: str) -> None:
    escaped = name.replace("\t", "\\t")
    err = config_error(tmp_path, f'[[hosts]]\naddress = "a"\n\nname = "{escaped}"\n')
    assert_line(err, 4)
    assert "'name'" in str(err)


def test_good_host_names() -> None:
    for name in ["pi-kitchen", "me@box:2222", "[::1]:22", "x" * 255, "é" * 127, "a b", "a.b"]:
        assert host_name_problem(name) is None, name


def test_syntax_error_has_the_line(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[hosts]]\nname = "a"\naddress = \n')
    assert_line(err, 3)
    assert "invalid TOML" in str(err)
    err = config_error(tmp_path, '[[hosts]]\nname = "a"\nname = "b"\n')
    assert_line(err, 3)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_bytes(b'[[hosts]]\naddress = "a"\nname = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert_line(info.value, 3)


def test_line_numbers_survive_tricky_toml(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        '''
        [defaults]
        proxy_command = """
        [[hosts]]
        name = "not a header"
        """
        exclude = [  # a comment with [[hosts]]
          "a/**",
          'b/**',
        ]

        [[hosts]]  # the first
        "name" = "first"
        address = 'first'
        tags = ["x", "y"]

        [[ hosts ]]
        name = "second"
        address = "second"
        tags = ["z"]
        port = 22
        "ports" = 23
        ''',
    )
    assert_line(err, 21)
    assert "[[hosts]] #2" in str(err)


# --------------------------------------------------------------------------- selection


def test_select(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, VALID))
    names = [h.name for h in inventory.hosts]
    assert [h.name for h in inventory.select()] == names
    assert [h.name for h in inventory.select(["vps", "pi-kitchen", "vps"])] == ["vps", "pi-kitchen"]
    assert [h.name for h in inventory.select(tags=["cloud", "edge"])] == ["pi-kitchen", "vps"]
    assert [h.name for h in inventory.select(["vps"], ["edge"])] == ["vps", "pi-kitchen"]
    with pytest.raises(ConfigError, match="no host has the tag 'nope'") as info:
        inventory.select(tags=["nope"])
    assert "edge" in info.value.hint
    assert inventory.tags == ["cloud", "edge", "home"]
    assert inventory.get("vps") is inventory.hosts[2]
    assert inventory.get("nope") is None


def test_select_adhoc(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, VALID))
    options = AdhocOptions(format="codex", known_hosts="kh", identity_file="id")
    chosen = inventory.select(["me@new:2222", "vps", "me@new:2222"], adhoc=options)
    assert [h.name for h in chosen] == ["me@new:2222", "vps"]
    new = chosen[0]
    assert new.endpoint == Endpoint(
        address="new", user="me", port=2222, identity_files=("id",), known_hosts="kh"
    )
    assert new.source.format == "codex"
    assert new.source.root == "~/.codex"
    (plain,) = Inventory(path=None, hosts=[]).select(["alias"])
    assert plain.source.format == "openclaw"
    assert plain.endpoint == Endpoint(address="alias")


def test_an_unreachable_name_not_in_the_inventory_is_explained(tmp_path: Path) -> None:
    """A name the inventory lacks is an ad-hoc host; when it cannot be reached, its hint
    says the name is not in the inventory and gives the closest names, else its names.
    Other errors, and hosts of the inventory or named without one, are left as they are."""
    path = write(tmp_path, VALID)
    inventory = load_inventory(path)
    typo, far, listed = inventory.select(["pi-kitchn", "zz", "vps"])
    assert typo.adhoc and listed.unlisted is None
    error = typo.explain(HostUnreachableError("connection refused", host=typo.name))
    assert error.hint.startswith(
        f"'pi-kitchn' is not a host of the inventory {path} (did you mean 'pi-kitchen' or "
        "'pi-kitchen-codex'?), so it was tried as an address or ssh_config alias; if it is "
        "one, check that the host is up"
    ), error.hint
    said = error.hint
    assert typo.explain(error).hint == said  # explained twice: said once
    error = far.explain(HostUnreachableError("cannot resolve host", host=far.name))
    assert "(its hosts: pi-kitchen, pi-kitchen-codex, vps, box.lan)" in error.hint, error.hint
    assert far.explain(ConfigError("no", host="zz")).hint == ConfigError.default_hint
    (alone,) = Inventory(path=None, hosts=[]).select(["zz"])
    assert alone.explain(HostUnreachableError("x")).hint == HostUnreachableError.default_hint


def test_an_inventory_address_named_as_a_host_is_told_the_hosts_at_it(tmp_path: Path) -> None:
    """`sync box`, box being the address of the inventory's box-openclaw and box-claude (one
    machine, two agents), was tried as an ad-hoc host without the inventory's ssh_config and
    failed "cannot resolve host name 'box'"; the hint listed the inventory's first hosts, not
    the two entries at that address that were meant. A user or port given must match too."""
    path = write(
        tmp_path,
        """
        [defaults]
        user = "agent"
        [[hosts]]
        name = "box-openclaw"
        address = "box"
        [[hosts]]
        name = "box-claude"
        address = "box"
        format = "claude-code"
        [[hosts]]
        name = "vps"
        address = "root@vps.example.net:2222"
        """,
    )
    inventory = load_inventory(path)
    box, upper, vps, other_user, other_port = inventory.select(
        ["box", "agent@BOX", "vps.example.net", "me@vps.example.net", "vps.example.net:22"]
    )
    hint = box.explain(HostUnreachableError("cannot resolve host name 'box'", host="box")).hint
    assert hint is not None and hint.startswith(
        f"'box' is not a host of the inventory {path} (the address of its hosts "
        "'box-openclaw', 'box-claude'; sync them by name, with the inventory's settings), so "
        "it was tried as an address or ssh_config alias; if it is one, check that"
    ), hint
    assert "its hosts 'box-openclaw', 'box-claude';" in str(upper.unlisted)
    assert "(the address of its host 'vps'; sync it by name," in str(vps.unlisted)
    for host in (other_user, other_port):
        assert "the address of" not in str(host.unlisted), host.unlisted


@pytest.mark.parametrize("error", [AuthenticationError, HostKeyError])
def test_a_name_not_in_the_inventory_that_a_host_answered_is_explained(
    tmp_path: Path, error: type[AuthenticationError | HostKeyError]
) -> None:
    """A mistyped inventory name may also be a real machine's: its host key or login error
    alone did not say the name was not the inventory's. The note comes first, the error's
    own hint after it, once however many times the error is reported; a listed host's
    error is left as it is."""
    path = write(tmp_path, VALID)
    typo, listed = load_inventory(path).select(["pi-kitchn", "vps"])
    explained = typo.explain(typo.explain(error("refused", host=typo.name)))
    assert explained.hint == (
        f"'pi-kitchn' is not a host of the inventory {path} (did you mean 'pi-kitchen' or "
        "'pi-kitchen-codex'?), so it was tried as an address or ssh_config alias, and a host "
        f"answered there; if it is the one meant, {error.default_hint}"
    ), explained.hint
    assert listed.explain(error("refused", host="vps")).hint == error.default_hint
    # A ProxyJump host's refusal: that host answered, not one at this name.
    through = error("ProxyJump host 'bastion': refused", host=typo.name)
    assert typo.explain(through).hint == error.default_hint


def test_select_adhoc_name_clash(tmp_path: Path) -> None:
    """An ad-hoc spec that is no host name is refused before its name (sanitized "a_b")
    could be mistaken for the inventory's host of that name."""
    inventory = load_inventory(write(tmp_path, '[[hosts]]\nname = "a_b"\naddress = "x"\n'))
    with pytest.raises(ConfigError, match="not a host name"):
        inventory.select(["a/b"])


def test_adhoc_host() -> None:
    host = adhoc_host("me@box:2222")
    assert host.name == "me@box:2222"
    assert host.endpoint == Endpoint(address="box", user="me", port=2222)
    assert host.source.root == "~/.openclaw"
    assert host.source.include == ("agents/*/sessions/**", "agents/*/sessions_archive/**")
    assert host.tags == ()

    host = adhoc_host(
        "box",
        format="jsonl",
        root="/var/log/agent",
        include=["*.jsonl"],
        exclude=["old/**"],
        ssh_config="cfg",
        host_key_policy="accept-new",
    )
    assert host.endpoint == Endpoint(
        address="box", ssh_config=("cfg",), host_key_policy="accept-new"
    )
    assert host.source.exclude == ("old/**",)
    assert host.source.is_included(b"x/y.jsonl")
    assert not host.source.is_included(b"old/y.jsonl")

    assert adhoc_host("[::1]:2222").endpoint == Endpoint(address="::1", port=2222)


def test_adhoc_jsonl_hint_says_where_include_globs_go() -> None:
    # The command line has --root but no --include: its hint must not ask for globs it
    # cannot pass, but name the inventory's include key.
    for kwargs in ({"format": "jsonl"}, {"format": "jsonl", "root": "/x"}):
        with pytest.raises(ConfigError) as caught:
            adhoc_host("box", **kwargs)  # type: ignore[arg-type]
        hint = caught.value.hint or ""
        assert "inventory" in hint and "include = [" in hint, hint
        assert "no option" in hint, hint


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"format": "nope"}, "unknown format"),
        ({"format": "jsonl"}, "no default root"),
        ({"format": "jsonl", "root": "/x"}, "no default include"),
        ({"include": ["../x"]}, "'..'"),
        ({"host_key_policy": "off"}, "host key policy"),
    ],
)
def test_adhoc_host_errors(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        adhoc_host("box", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        adhoc_host("me@box:notaport")
    with pytest.raises(ConfigError):
        adhoc_host("")


def test_sanitize_host_name() -> None:
    assert sanitize_host_name("me@box:2222") == "me@box:2222"
    for spec in ["../x", "a/b", ".", "..", "", "x\ny", "\x00", "é" * 200]:
        name = sanitize_host_name(spec)
        assert host_name_problem(name) is None, (spec, name)
    assert sanitize_host_name("a/b") == "a_b"


def test_host_validates_its_name() -> None:
    source = Source(format="openclaw", root="~/.openclaw", include=("agents/*/sessions/**",))
    with pytest.raises(ConfigError):
        Host(name="../x", endpoint=Endpoint(address="x"), source=source)
    with pytest.raises(ConfigError):
        Source(format="openclaw", root="", include=("**",))
