"""The systemd unit keeps the SPEC's promises: notify + watchdog, credential, preserved runtime dir.

systemd-analyze itself runs in .ci/check-deploy; these tests pin the values it cannot judge.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "forestreet-sidecar.service"
CONSUMER = SYSTEMD / "example-consumer.service"
SYSUSERS = SYSTEMD / "forestreet-sidecar.sysusers.conf"

HARDENING_MARKER = "# Hardening"


@dataclass(frozen=True, slots=True)
class Directive:
    section: str
    key: str
    value: str
    line: int
    commented: bool  # the line above is a comment


def parse_unit(path: Path) -> list[Directive]:
    """Directives in file order; keys may repeat, as systemd allows (no configparser)."""
    directives: list[Directive] = []
    section = ""
    previous = ""
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}:{n}: not a Key=Value line: {raw!r}"
            assert not value.endswith("\\"), f"{path.name}:{n}: no line continuations, please"
            directives.append(
                Directive(section, key.strip(), value.strip(), n, previous.startswith("#"))
            )
        previous = line
    return directives


def values(directives: list[Directive], key: str, section: str = "Service") -> list[str]:
    return [d.value for d in directives if d.key == key and d.section == section]


def value(directives: list[Directive], key: str, section: str = "Service") -> str:
    found = values(directives, key, section)
    assert len(found) == 1, f"{key}= set {len(found)} times in [{section}]"
    return found[0]


@pytest.fixture(scope="module")
def unit() -> list[Directive]:
    return parse_unit(UNIT)


@pytest.fixture(scope="module")
def consumer() -> list[Directive]:
    return parse_unit(CONSUMER)


def test_ready_only_after_the_first_token(unit: list[Directive]) -> None:
    """Type=notify with NotifyAccess=main: READY=1 from the daemon itself, after the first token."""
    assert value(unit, "Type") == "notify"
    assert value(unit, "NotifyAccess") == "main"


def test_watchdog_is_armed(unit: list[Directive]) -> None:
    """WatchdogSec=60: the daemon pings every 30 s, a hung refresh loop is restarted."""
    assert value(unit, "WatchdogSec") == "60"


def test_config_errors_are_not_restarted(unit: list[Directive]) -> None:
    """Restart=on-failure, but exit 78 (configuration error) is final."""
    assert value(unit, "Restart") == "on-failure"
    assert "78" in value(unit, "RestartPreventExitStatus").split()


def test_runs_the_daemon_with_the_config_file(unit: list[Directive]) -> None:
    """ExecStart runs `forestreet-sidecar --config /etc/forestreet-sidecar/config.yaml run`."""
    argv = shlex.split(value(unit, "ExecStart"))
    assert Path(argv[0]).name == "forestreet-sidecar"
    assert argv[0].startswith("/")
    assert argv[1:] == ["--config", "/etc/forestreet-sidecar/config.yaml", "run"]


def test_api_key_comes_as_a_credential(unit: list[Directive]) -> None:
    """LoadCredential=forestreet-api-key:...: the name the daemon looks for in $CREDENTIALS_DIRECTORY."""
    name, _, source = value(unit, "LoadCredential").partition(":")
    assert name == "forestreet-api-key"
    assert source == "/etc/forestreet-sidecar/api-key"
    for env in values(unit, "Environment"):
        assert "API_KEY" not in env.upper(), "the key must not travel in the environment"


def test_runtime_directory_survives_restarts(unit: list[Directive]) -> None:
    """RuntimeDirectory=forestreet is kept on stop/restart, so the token is not pulled away."""
    assert value(unit, "RuntimeDirectory") == "forestreet"
    assert value(unit, "RuntimeDirectoryPreserve") == "yes"
    assert value(unit, "RuntimeDirectoryMode") == "0750"


def test_token_is_written_into_the_runtime_directory(unit: list[Directive]) -> None:
    """systemd/config.yaml, which check-config reads, puts the token in /run/<RuntimeDirectory>/
    with the unit's Group= (the group the file is created with: no chown, which the filter forbids).
    The unit itself sets no FORESTREET_SIDECAR_* variable that check-config would not see."""
    config = yaml.safe_load((SYSTEMD / "config.yaml").read_text())
    runtime = value(unit, "RuntimeDirectory")
    assert config["token"]["path"] == f"/run/{runtime}/token"
    assert config["token"]["group"] == value(unit, "Group")
    assert not [e for e in values(unit, "Environment") if e.startswith("FORESTREET_SIDECAR_")]


def test_umask_and_no_capabilities(unit: list[Directive]) -> None:
    """UMask=0077 and an empty capability bounding set."""
    assert value(unit, "UMask") == "0077"
    assert value(unit, "CapabilityBoundingSet") == ""
    assert value(unit, "AmbientCapabilities") == ""


def test_static_user_because_the_runtime_directory_is_preserved(unit: list[Directive]) -> None:
    """A preserved directory must not be owned by a dynamic UID that systemd may recycle."""
    assert values(unit, "DynamicUser") in ([], ["no"])
    assert value(unit, "User") == "forestreet-sidecar"


EXPECTED_HARDENING = {
    "DevicePolicy": "closed",
    "KeyringMode": "private",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "NoNewPrivileges": "yes",
    "PrivateDevices": "yes",
    "PrivateTmp": "yes",
    "PrivateUsers": "yes",
    "ProtectClock": "yes",
    "ProtectControlGroups": "yes",
    "ProtectHome": "yes",
    "ProtectHostname": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectProc": "invisible",
    "ProtectSystem": "strict",
    "RemoveIPC": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
}


def test_hardening_set_is_complete(unit: list[Directive]) -> None:
    """Every hardening directive of the job is set to its strict value."""
    for key, expected in EXPECTED_HARDENING.items():
        assert value(unit, key) == expected, key
    assert values(unit, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]


def test_hardening_directives_are_alphabetical(unit: list[Directive]) -> None:
    """Below the hardening marker, one directive per line in alphabetical order."""
    lines = UNIT.read_text().splitlines()
    start = next(n for n, line in enumerate(lines, 1) if line.startswith(HARDENING_MARKER))
    block = [d for d in unit if d.section == "Service" and d.line > start]
    keys = [d.key for d in block]
    assert len(keys) >= len(EXPECTED_HARDENING)
    assert keys == sorted(keys, key=str.lower)
    assert set(EXPECTED_HARDENING) <= set(keys)


@pytest.mark.parametrize("path", [UNIT, CONSUMER], ids=lambda p: p.name)
def test_every_directive_has_a_comment_above(path: Path) -> None:
    """Each directive says why it is there, on the line above it."""
    bare = [f"{d.line}: {d.key}" for d in parse_unit(path) if not d.commented]
    assert bare == []


def _sysusers() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in SYSUSERS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = shlex.split(line)
            entries[f"{fields[0]} {fields[1]}"] = fields[2:]
    return entries


def test_sysusers_creates_the_user_and_the_consumers_group(unit: list[Directive]) -> None:
    """sysusers.d creates the unit's Group= and its User= with that group as primary group."""
    group, user = value(unit, "Group"), value(unit, "User")
    entries = _sysusers()
    assert f"g {group}" in entries
    assert entries[f"u {user}"][0] == f"-:{group}"


def test_consumer_joins_the_group_and_starts_after_the_token(
    unit: list[Directive], consumer: list[Directive]
) -> None:
    """The example consumer reads via SupplementaryGroups and starts once the sidecar is ready."""
    assert value(unit, "Group") in value(consumer, "SupplementaryGroups").split()
    assert "forestreet-sidecar.service" in value(consumer, "After", "Unit").split()
    assert "forestreet-sidecar.service" in value(consumer, "Wants", "Unit").split()
    assert values(consumer, "Requires", "Unit") == [], "a sidecar restart must not stop the app"
    assert values(consumer, "PrivateUsers") in ([], ["no"]), "it would unmap the group"
    env = dict(e.split("=", 1) for e in values(consumer, "Environment"))
    assert env["FORESTREET_TOKEN_FILE"] == f"/run/{value(unit, 'RuntimeDirectory')}/token"


def test_metrics_port_is_the_only_bindable_port(unit: list[Directive]) -> None:
    """SocketBindAllow= names the daemon's default port 9877 and nothing else."""
    assert value(unit, "SocketBindAllow") == "tcp:9877"
    assert value(unit, "SocketBindDeny") == "any"
    config = (SYSTEMD / "config.yaml").read_text()
    assert re.search(r"^\s+listen: \S+:9877$", config, re.MULTILINE)
