"""Image, chart, systemd unit, docs and SPEC agree on every default they share.

The chart's own values are read from values.yaml and its rendered ConfigMap; the daemon's
defaults come from the SPEC constants below (sidecar.config's API is not imported on purpose).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Rendering needs the Helm library of ../shared/tools: run by .ci/run (`pytest -m chart`),
# not by the self-contained default test command.
pytestmark = pytest.mark.chart

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "forestreet-sidecar"
DOCKERFILE = REPO / "Dockerfile"
UNIT = REPO / "systemd" / "forestreet-sidecar.service"
DEPLOY_DOC = REPO / "README.md"
DEPLOY_ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
CHART_ALERTS = CHART / "files" / "alerts.yaml"


@dataclass(frozen=True, slots=True)
class SpecDefaults:
    uid: int
    gid: int
    port: int
    listen: str
    token_path: str
    token_mode: str
    config_path: str
    key_path: str
    systemd_runtime_directory: str
    systemd_token_path: str
    credential: str
    version: str


# The SPEC defaults ("Configuration" table and "Deployment artifacts"), stated once. The daemon's
# own defaults live in sidecar.config; config.example.yaml documents them and is checked below.
SPEC = SpecDefaults(
    uid=10001,
    gid=10001,
    port=9877,
    listen="0.0.0.0:9877",
    token_path="/var/run/forestreet/token",
    token_mode="0640",
    config_path="/etc/forestreet-sidecar/config.yaml",
    key_path="/var/run/secrets/forestreet/api-key",
    systemd_runtime_directory="forestreet",
    systemd_token_path="/run/forestreet/token",
    credential="forestreet-api-key",
    version="0.1.0",
)

Doc = dict[str, Any]


@functools.cache
def rendered_default() -> tuple[Doc, ...]:
    """The chart rendered with ci/default-values.yaml by ../shared/tools/helm_template.py."""
    tool = Path(
        os.environ.get("FS_HELM_TEMPLATE", REPO.parent / "shared" / "tools" / "helm_template.py")
    )
    if not tool.is_file():
        pytest.fail(
            f"helm renderer not found at {tool}: put the project's shared tools beside the "
            "repository (../shared/tools) or set FS_HELM_TEMPLATE",
            pytrace=False,
        )
    proc = subprocess.run(
        [str(tool), "-f", str(CHART / "ci" / "default-values.yaml"), str(CHART)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"helm template failed:\n{proc.stderr}", pytrace=False)
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def of_kind(kind: str) -> Doc:
    (doc,) = [d for d in rendered_default() if d["kind"] == kind]
    return doc


def pod_spec() -> Doc:
    spec: Doc = of_kind("Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar() -> Doc:
    (c,) = [c for c in pod_spec()["initContainers"] if c["name"] == "forestreet-sidecar"]
    container: Doc = c
    return container


def chart_config() -> Doc:
    config: Doc = yaml.safe_load(of_kind("ConfigMap")["data"]["config.yaml"])
    return config


def dockerfile(op: str) -> list[str]:
    """Arguments of every `op` instruction (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        line.split(None, 1)[1].strip()
        for line in text.splitlines()
        if line.split(None, 1)[:1] == [op] and " " in line
    ]


def unit(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def test_uid_and_gid_agree_across_image_and_chart() -> None:
    """Dockerfile USER = chart runAsUser/runAsGroup (pod and sidecar) = fsGroup = token.group."""
    assert dockerfile("USER") == [f"{SPEC.uid}:{SPEC.gid}"]
    psc = pod_spec()["securityContext"]
    sc = sidecar()["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (
        SPEC.uid,
        SPEC.gid,
        SPEC.gid,
    )
    assert (sc["runAsUser"], sc["runAsGroup"]) == (SPEC.uid, SPEC.gid)
    assert chart_config()["token"]["group"] == str(SPEC.gid)
    runs = " ".join(dockerfile("RUN"))
    assert f"--uid {SPEC.uid} --gid {SPEC.gid}" in runs


def test_port_agrees_across_image_chart_and_daemon_default() -> None:
    """EXPOSE = container port = probe ports = server.listen, all 9877."""
    assert dockerfile("EXPOSE") == [str(SPEC.port)]
    c = sidecar()
    assert c["ports"][0]["containerPort"] == SPEC.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == SPEC.port
    assert chart_config()["server"]["listen"] == SPEC.listen
    assert unit("SocketBindAllow") == [f"tcp:{SPEC.port}"]


def test_token_path_agrees_across_chart_image_and_unit() -> None:
    """The chart writes and mounts /var/run/forestreet/token; the unit uses /run/forestreet/token."""
    token_dir = str(Path(SPEC.token_path).parent)
    assert chart_config()["token"]["path"] == SPEC.token_path
    mounts = [m for c in pod_spec()["containers"] for m in c["volumeMounts"]]
    mounts += sidecar()["volumeMounts"]
    assert {m["mountPath"] for m in mounts if m["name"] == "forestreet-token"} == {token_dir}
    assert "/var/run/forestreet" in " ".join(dockerfile("RUN"))
    assert unit("RuntimeDirectory") == [SPEC.systemd_runtime_directory]
    unit_config = yaml.safe_load((REPO / "systemd" / "config.yaml").read_text())
    assert unit_config["token"]["path"] == SPEC.systemd_token_path
    assert SPEC.systemd_token_path == f"/run/{SPEC.systemd_runtime_directory}/token"


def test_token_mode_is_0640_in_the_chart() -> None:
    """The chart's config writes the token with mode "0640" (a string)."""
    assert chart_config()["token"]["mode"] == SPEC.token_mode


def test_config_path_agrees_across_chart_and_unit() -> None:
    """The chart mounts config.yaml where --config points; the unit passes the same path."""
    config_path = Path(SPEC.config_path)
    assert f"--config={config_path}" in sidecar()["args"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar()["volumeMounts"]}
    assert mounts["forestreet-config"] == str(config_path.parent)
    assert config_path.name in of_kind("ConfigMap")["data"]
    (exec_start,) = unit("ExecStart")
    argv = shlex.split(exec_start)
    assert argv[argv.index("--config") + 1] == str(config_path)


def test_api_key_path_agrees_between_mount_and_config() -> None:
    """api.key_file is the file the Secret volume projects; the unit loads the credential name."""
    key_path = Path(SPEC.key_path)
    assert chart_config()["api"]["key_file"] == str(key_path)
    mounts = {m["name"]: m["mountPath"] for m in sidecar()["volumeMounts"]}
    assert mounts["forestreet-api-key"] == str(key_path.parent)
    (vol,) = [v for v in pod_spec()["volumes"] if v["name"] == "forestreet-api-key"]
    assert [i["path"] for i in vol["secret"]["items"]] == [key_path.name]
    assert [c.split(":")[0] for c in unit("LoadCredential")] == [SPEC.credential]


def test_versions_agree() -> None:
    """Package version = chart appVersion = image tag in values = the image's version label."""
    init = (REPO / "sidecar" / "__init__.py").read_text()
    assert f'__version__ = "{SPEC.version}"' in init
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == SPEC.version
    assert sidecar()["image"].endswith(f":{SPEC.version}")
    assert f"VERSION={SPEC.version}" in dockerfile("ARG")


def test_config_example_documents_the_same_defaults() -> None:
    """config.example.yaml (the daemon's documented defaults) agrees with the SPEC constants."""
    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    assert example["token"]["path"] == SPEC.token_path
    assert example["token"]["mode"] == SPEC.token_mode
    assert example["server"]["listen"] == SPEC.listen


def test_chart_alerts_match_deploy_rules() -> None:
    """files/alerts.yaml in the chart is deploy/prometheus/alerts.yaml, byte for byte."""
    assert CHART_ALERTS.read_bytes() == DEPLOY_ALERTS.read_bytes(), (
        f"copy {DEPLOY_ALERTS.relative_to(REPO)} to {CHART_ALERTS.relative_to(REPO)}"
    )


def _values_keys(values: Doc, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _values_keys(value, f"{prefix}{key}.")
    return keys


def test_docs_set_only_values_the_chart_has() -> None:
    """Every `--set key=...` in the README names a key of values.yaml."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    known = _values_keys(values)
    used = set(re.findall(r"--set(?:-string|-file)? ([A-Za-z][\w.]*)=", DEPLOY_DOC.read_text()))
    assert used, "the README shows no helm --set"
    assert used <= known, sorted(used - known)


def test_the_chart_schema_takes_every_scalar_config_key_the_daemon_knows() -> None:
    """sidecar.config's schema is closed: a key the daemon has but the schema lacks cannot be
    set from the chart at all (refresh.first_from_fraction was missing once)."""
    import json

    from sidecar.config import keys

    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = schema["properties"]["sidecar"]["properties"]["config"]["properties"]
    missing = [
        f"{section}.{key}"
        for section, key in keys()
        if key not in sections.get(section, {}).get("properties", {})
    ]
    assert missing == []
