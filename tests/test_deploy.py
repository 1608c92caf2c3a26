"""The systemd units in deploy/ stay in step with the command line they run.

A unit whose ExecStart names an option the CLI no longer has fails only when the timer
fires, on the user's machine; here it fails the suite.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from remote_sync.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_LOCKED, build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = [
    DEPLOY / "remote-sync.service",
    DEPLOY / "remote-sync.timer",
    DEPLOY / "remote-sync-agent.service",
]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path)
    return parser


def test_the_service_runs_a_sync_the_command_line_accepts() -> None:
    service = unit(DEPLOY / "remote-sync.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "remote-sync"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "sync" and args.json and args.inventory and args.dest
    # The mirror is where the unit may write, and the lock's exit status is no failure,
    # while a partial run's is.
    assert args.dest.startswith(service["ReadWritePaths"])
    accepted = service["SuccessExitStatus"].split()
    assert str(EXIT_LOCKED) in accepted and str(EXIT_FAILED) not in accepted
    # systemctl stop's SIGTERM cancels the run (exit 130): systemd takes a service killed by
    # SIGTERM for a clean stop, but an exit status only when listed, so without it every
    # stop (a shutdown's too) left the unit failed.
    assert str(EXIT_CANCELLED) in accepted


def test_the_agent_service_runs_an_agent_the_command_line_accepts() -> None:
    service = unit(DEPLOY / "remote-sync-agent.service")["Service"]
    assert service["Type"] == "simple"
    args = build_parser().parse_args(shlex.split(service["ExecStart"])[1:])
    assert args.command == "agent" and args.json and args.every == 15 * 60
    # Connections outlive the period between scheduled syncs, or each pays its handshakes.
    assert args.persist is not None and args.persist > args.every
    assert args.dest.startswith(service["ReadWritePaths"])
    # The same hardening as the timer's service.
    timer_run = unit(DEPLOY / "remote-sync.service")["Service"]
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "User"):
        assert service[key] == timer_run[key], key


def test_the_timer_starts_the_service() -> None:
    timer = unit(DEPLOY / "remote-sync.timer")
    assert timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"
    # A timer starts the service of its own name unless it says otherwise.
    assert "Unit" not in timer["Timer"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_finds_nothing_wrong_with_the_units(tmp_path: Path) -> None:
    # The units name the path the install steps put the script at, which this machine may
    # lack (systemd checks that ExecStart's program exists): any program stands in for it.
    copies = []
    for path in UNITS:
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/usr/local/bin/remote-sync", "/bin/true"))
        copies.append(str(copy))
    done = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60
    )
    # What systemd says of our units names them; other lines are about the machine (no
    # running systemd in a container, say), not about the units.
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines() if "remote-sync." in line
    ]
    assert not complaints, done
