"""The Helm chart, rendered by the real Helm v4 engine, runs the sidecar the way SPEC.md says.

The renderer is ../shared/tools/helm_template.py (beside the repository on every machine of the
project, dev and CI), or the path in $FS_HELM_TEMPLATE. Each scenario is rendered once per session.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Rendering needs the Helm library of ../shared/tools: run by .ci/run (`pytest -m chart`),
# not by the self-contained default test command.
pytestmark = pytest.mark.chart

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "forestreet-sidecar"
EMBEDDING_CHART = REPO / "helm" / "examples" / "embedding-chart"
CRD_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")

SIDECAR = "forestreet-sidecar"
PORT = 9877
TOKEN_DIR = "/var/run/forestreet"
KEY_DIR = "/var/run/secrets/forestreet"
CONFIG_DIR = "/etc/forestreet-sidecar"
CI_API_KEY = "ci-placeholder-api-key"

Doc = dict[str, Any]


def helm_template_tool() -> Path:
    """The helm_template.py to use; fails the test with the fix when it is missing."""
    tool = Path(
        os.environ.get("FS_HELM_TEMPLATE", REPO.parent / "shared" / "tools" / "helm_template.py")
    )
    if not tool.is_file():
        pytest.fail(
            f"helm renderer not found at {tool}: the chart tests need the project's shared tools "
            "beside the repository (../shared/tools, as in CI), or FS_HELM_TEMPLATE=/path/to/"
            "helm_template.py",
            pytrace=False,
        )
    return tool


def run_helm_template(chart: Path, *values: Path) -> subprocess.CompletedProcess[str]:
    args = [str(helm_template_tool())]
    for kind in CRD_KINDS:
        args += ["--api-resource", f"monitoring.coreos.com/v1/{kind}"]
    for v in values:
        args += ["-f", str(v)]
    args.append(str(chart))
    return subprocess.run(args, capture_output=True, text=True, timeout=110, check=False)


@functools.cache
def render_chart(chart: Path, *values: Path) -> tuple[Doc, ...]:
    """Rendered documents of the chart with the given values files (cached per session)."""
    proc = run_helm_template(chart, *values)
    if proc.returncode != 0:
        pytest.fail(f"helm template {chart.name} {values} failed:\n{proc.stderr}", pytrace=False)
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(scenario: str) -> tuple[Doc, ...]:
    return render_chart(CHART, CHART / "ci" / f"{scenario}-values.yaml")


def render_values(tmp_path: Path, values: Doc, chart: Path = CHART) -> tuple[Doc, ...]:
    """Rendered documents of the chart with these values (one values file in tmp_path)."""
    f = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
    f.write_text(yaml.safe_dump(values))
    return render_chart(chart, f)


def render_fails(tmp_path: Path, values: Doc) -> str:
    """Helm's error text for values that must be refused."""
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    proc = run_helm_template(CHART, f)
    assert proc.returncode != 0, f"rendered although it should fail:\n{proc.stdout}"
    return proc.stderr


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[Doc, ...], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs: tuple[Doc, ...]) -> Doc:
    spec: Doc = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar_container(spec: Doc) -> Doc:
    (c,) = [c for c in spec.get("initContainers", []) if c["name"] == SIDECAR]
    container: Doc = c
    return container


def app_containers(spec: Doc) -> list[Doc]:
    containers: list[Doc] = spec["containers"]
    return containers


def all_containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def volume(spec: Doc, name: str) -> Doc:
    (v,) = [v for v in spec["volumes"] if v["name"] == name]
    found: Doc = v
    return found


def mounts_of(container: Doc, volume_name: str) -> list[Doc]:
    return [m for m in container.get("volumeMounts", []) if m["name"] == volume_name]


def sidecar_config(docs: tuple[Doc, ...]) -> Doc:
    config: Doc = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    return config


SCENARIOS = [
    "default",
    "existing-secret",
    "monitoring",
    "podmonitor",
    "ca-bundle",
    "mirror-pdb-probes",
    "podmonitor-settings",
]


# ---- the native sidecar --------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sidecar_is_a_native_sidecar_init_container(scenario: str) -> None:
    """The sidecar is an initContainers entry with restartPolicy Always, not a regular container."""
    spec = pod_spec(render(scenario))
    assert sidecar_container(spec)["restartPolicy"] == "Always"
    assert SIDECAR not in [c["name"] for c in spec["containers"]]
    assert [c["name"] for c in spec["containers"]] == ["app"]


def test_startup_probe_holds_the_app_until_a_token_exists() -> None:
    """startupProbe and readinessProbe ask /readyz, livenessProbe /healthz, all on port 9877."""
    c = sidecar_container(pod_spec(render("default")))
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": PORT}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": PORT}
    assert c["ports"] == [{"name": "fs-metrics", "containerPort": PORT, "protocol": "TCP"}]
    # Long enough for a slow first login; the kubelet restarts the sidecar after that.
    probe = c["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


def test_sidecar_runs_the_daemon_with_the_mounted_config() -> None:
    """The sidecar runs `--config=/etc/forestreet-sidecar/config.yaml run` from the ConfigMap."""
    docs = render("default")
    spec = pod_spec(docs)
    c = sidecar_container(spec)
    assert c["args"] == [f"--config={CONFIG_DIR}/config.yaml", "run"]
    (m,) = mounts_of(c, "forestreet-config")
    assert m == {"name": "forestreet-config", "mountPath": CONFIG_DIR, "readOnly": True}
    cm = one(docs, "ConfigMap")
    assert volume(spec, "forestreet-config")["configMap"]["name"] == cm["metadata"]["name"]


# ---- the token volume ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_token_is_shared_through_a_memory_emptydir(scenario: str) -> None:
    """The token lives in a memory-backed emptyDir of 1Mi, never on a node's disk."""
    v = volume(pod_spec(render(scenario)), "forestreet-token")
    assert v["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_app_mounts_the_token_directory_read_only_without_subpath(scenario: str) -> None:
    """The app sees the whole token directory read-only (a subPath would miss the rename)."""
    spec = pod_spec(render(scenario))
    for app in app_containers(spec):
        (m,) = mounts_of(app, "forestreet-token")
        assert m == {"name": "forestreet-token", "mountPath": TOKEN_DIR, "readOnly": True}
    for c in all_containers(spec):
        assert all("subPath" not in m and "subPathExpr" not in m for m in c["volumeMounts"])


def test_sidecar_mounts_the_token_directory_writable() -> None:
    """Only the sidecar writes the token directory."""
    (m,) = mounts_of(sidecar_container(pod_spec(render("default"))), "forestreet-token")
    assert m["mountPath"] == TOKEN_DIR
    assert not m.get("readOnly", False)


# ---- the API key -----------------------------------------------------------------------------


def _env_refs_to_secret(c: Doc, secret: str) -> list[str]:
    refs = [
        e["name"]
        for e in c.get("env", [])
        if "API_KEY" in e["name"].upper()
        or e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret
    ]
    refs += [f"envFrom:{s['secretRef']['name']}" for s in c.get("envFrom", []) if "secretRef" in s]
    return refs


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_api_key_is_mounted_as_a_file_never_an_env_var(scenario: str) -> None:
    """The key reaches the sidecar only as /var/run/secrets/forestreet/api-key; no env var carries it."""
    spec = pod_spec(render(scenario))
    secret = volume(spec, "forestreet-api-key")["secret"]
    assert secret["items"][0]["path"] == "api-key"
    assert len(secret["items"]) == 1
    assert secret["defaultMode"] in (0o440, 0o400)
    (m,) = mounts_of(sidecar_container(spec), "forestreet-api-key")
    assert m == {"name": "forestreet-api-key", "mountPath": KEY_DIR, "readOnly": True}
    for c in all_containers(spec):
        assert _env_refs_to_secret(c, secret["secretName"]) == [], c["name"]
    for app in app_containers(spec):
        assert mounts_of(app, "forestreet-api-key") == [], "the app must not see the key"


def test_secret_is_created_from_api_key_value() -> None:
    """apiKey.value becomes a Secret whose key "api-key" the volume projects."""
    docs = render("default")
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == CI_API_KEY
    vol = volume(pod_spec(docs), "forestreet-api-key")["secret"]
    assert vol["secretName"] == secret["metadata"]["name"]
    assert vol["items"] == [{"key": "api-key", "path": "api-key"}]


@pytest.mark.parametrize("scenario", ["default", "monitoring"])
def test_api_key_never_appears_in_clear_text(scenario: str) -> None:
    """Outside the Secret's base64 data, the rendered manifests never contain the key."""
    docs = render(scenario)
    text = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert CI_API_KEY not in text


def test_existing_secret_is_referenced_and_no_secret_is_created() -> None:
    """With apiKey.existingSecret the pod uses that Secret and its key; the chart creates none."""
    docs = render("existing-secret")
    assert of_kind(docs, "Secret") == []
    vol = volume(pod_spec(docs), "forestreet-api-key")["secret"]
    assert vol["secretName"] == "forestreet-api-key"
    assert vol["items"] == [{"key": "key", "path": "api-key"}]
    assert vol["defaultMode"] == 0o400


def test_image_digest_wins_over_tag() -> None:
    """sidecar.image.digest pins the image by digest."""
    c = sidecar_container(pod_spec(render("existing-secret")))
    assert c["image"] == "ghcr.io/forestreet/forestreet-sidecar@sha256:" + "0" * 64


# ---- security contexts ------------------------------------------------------------------------


RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_is_restricted(scenario: str) -> None:
    """Both containers: non-root, read-only root, no privilege escalation, no capabilities, seccomp."""
    for c in all_containers(pod_spec(render(scenario))):
        sc = c["securityContext"]
        for field, expected in RESTRICTED.items():
            assert sc.get(field) == expected, f"{c['name']}: securityContext.{field}"
        assert sc.get("privileged", False) is False
        assert sc.get("runAsUser", 10001) != 0


def test_sidecar_runs_as_10001() -> None:
    """The sidecar runs as 10001:10001, the image's USER."""
    sc = sidecar_container(pod_spec(render("default")))["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001)


def test_pod_security_context_is_restricted_with_fsgroup() -> None:
    """The pod runs non-root as 10001 with fsGroup 10001 and RuntimeDefault seccomp."""
    psc = pod_spec(render("default"))["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_app_reads_the_token_through_fsgroup() -> None:
    """The default app runs as another UID and reads the 0640 token as a member of the fsGroup."""
    docs = render("default")
    spec = pod_spec(docs)
    app_user = app_containers(spec)[0]["securityContext"]["runAsUser"]
    assert app_user != sidecar_container(spec)["securityContext"]["runAsUser"]
    token = sidecar_config(docs)["token"]
    assert token["mode"] == "0640"
    assert token["group"] == str(spec["securityContext"]["fsGroup"])


def test_pods_get_no_service_account_token() -> None:
    """Neither container needs the Kubernetes API, so no token is mounted by default."""
    docs = render("default")
    assert pod_spec(docs)["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False


# ---- the configuration -------------------------------------------------------------------------


def test_config_map_holds_the_agreed_defaults() -> None:
    """config.yaml names the mounted key file, the shared token path, mode "0640" and port 9877."""
    config = sidecar_config(render("default"))
    assert set(config) <= {"api", "token", "refresh", "backoff", "server", "log"}
    assert config["api"]["key_file"] == f"{KEY_DIR}/api-key"
    assert config["api"]["base_url"] == "https://rest.forestreet.com"
    assert config["token"] == {"path": f"{TOKEN_DIR}/token", "mode": "0640", "group": "10001"}
    assert config["server"]["listen"] == f"0.0.0.0:{PORT}"


def test_token_mode_and_group_are_quoted_strings() -> None:
    """mode and group are YAML strings, so the daemon never reads 0640 as the number 416."""
    text = one(render("default"), "ConfigMap")["data"]["config.yaml"]
    assert re.search(r'^\s+mode: "0640"$', text, re.MULTILINE)
    assert re.search(r'^\s+group: "10001"$', text, re.MULTILINE)


def test_values_config_is_merged_over_the_defaults() -> None:
    """sidecar.config adds keys without dropping the chart's defaults."""
    config = sidecar_config(render("existing-secret"))
    assert config["refresh"] == {"at_fraction": 0.75}
    assert config["token"]["session_path"] == f"{TOKEN_DIR}/session.json"
    assert config["token"]["path"] == f"{TOKEN_DIR}/token"
    assert config["api"]["key_file"] == f"{KEY_DIR}/api-key"


def test_config_checksum_annotation_tracks_the_config() -> None:
    """The pod template's checksum is the SHA-256 of config.yaml, so a config change rolls the pods."""
    docs = render("default")
    data = one(docs, "ConfigMap")["data"]["config.yaml"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    expected = hashlib.sha256(data.removesuffix("\n").encode()).hexdigest()
    assert annotations["checksum/forestreet-sidecar-config"] == expected


def test_sidecar_port_moves_probes_ports_and_listen_together() -> None:
    """sidecar.port changes server.listen, the container port and every probe at once."""
    docs = render("podmonitor")
    c = sidecar_container(pod_spec(docs))
    assert c["ports"][0]["containerPort"] == 9900
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == 9900
    assert sidecar_config(docs)["server"]["listen"] == "0.0.0.0:9900"


# ---- optional resources ------------------------------------------------------------------------


def test_optional_resources_are_off_by_default() -> None:
    """The default renders only the Deployment, its ServiceAccount, ConfigMap and Secret."""
    kinds = sorted(d["kind"] for d in render("default"))
    assert kinds == ["ConfigMap", "Deployment", "Secret", "ServiceAccount"]


def test_monitoring_scenario_renders_every_optional_resource() -> None:
    """Service, ServiceMonitor, PrometheusRule and NetworkPolicy are rendered when enabled."""
    kinds = {d["kind"] for d in render("monitoring")}
    assert {"Service", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds
    assert "PodMonitor" not in kinds


def test_service_monitor_scrapes_the_sidecar_port() -> None:
    """The ServiceMonitor selects the metrics Service, which targets the sidecar's port."""
    docs = render("monitoring")
    svc = one(docs, "Service")
    sm = one(docs, "ServiceMonitor")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"] == [
        {"name": "fs-metrics", "port": PORT, "targetPort": "fs-metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "fs-metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitor_scrapes_the_sidecar_port() -> None:
    """The PodMonitor selects the pods and scrapes the named sidecar port."""
    docs = render("podmonitor")
    pm = one(docs, "PodMonitor")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "fs-metrics"


def test_prometheus_rule_carries_the_alerts_file() -> None:
    """The PrometheusRule's groups are files/alerts.yaml's groups, unchanged."""
    rule = one(render("monitoring"), "PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    names = [r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "ForestreetSidecarTokenExpiringSoon" in names


def test_network_policy_allows_only_api_and_dns_egress() -> None:
    """Egress goes to the API CIDRs on 443 and to DNS on 53 UDP/TCP; nothing else."""
    docs = render("monitoring")
    np = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert np["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert np["policyTypes"] == ["Egress"]
    api, dns = np["egress"]
    assert api["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert api["ports"] == [{"protocol": "TCP", "port": 443}]
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


# ---- values refused ------------------------------------------------------------------------------


def test_render_fails_without_an_api_key(tmp_path: Path) -> None:
    """With neither apiKey.value nor apiKey.existingSecret the chart refuses, naming both."""
    err = render_fails(tmp_path, {})
    assert "no API key" in err
    assert "apiKey.existingSecret" in err
    assert "apiKey.value" in err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sidecar": {"config": {"token": {"path": "/tmp/token"}}}}, "token"),
        ({"sidecar": {"config": {"token": {"mode": 416}}}}, "mode"),
        ({"sidecar": {"config": {"server": {"listen": "0.0.0.0:8080"}}}}, "sidecar.port"),
        ({"sidecar": {"config": {"tokn": {}}}}, "tokn"),
        ({"sidecar": {"imag": {}}}, "imag"),
        ({"serviceMonitor": {"enabled": True}}, "service.enabled"),
        ({"caBundle": {"configmap": "ca"}}, "configmap"),
        ({"caBundle": {"configMap": "ca", "secret": "ca"}}, "caBundle.secret, not both"),
        (
            {
                "caBundle": {"configMap": "ca"},
                "sidecar": {"config": {"api": {"ca_bundle": "/etc/ssl/ca.pem"}}},
            },
            "caBundle both set",
        ),
        ({"sidecar": {"extraVolumeMount": []}}, "extraVolumeMount"),
        ({"sidecar": {"extraVolumeMounts": [{"mountPath": "/x"}]}}, "missing property 'name'"),
        ({"sidecar": {"image": {"registy": "mirror.example.com"}}}, "registy"),
        ({"sidecar": {"livenessProbe": {"httpget": {"path": "/x"}}}}, "httpget"),
        (
            {"sidecar": {"livenessProbe": {"exec": {"command": ["true"]}, "httpGet": {}}}},
            "more than one handler",
        ),
        ({"podDisruptionBudget": {"minAvaliable": 1}}, "minAvaliable"),
        (
            {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}},
            "not both",
        ),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "'half' does not match"),
        ({"serviceMonitor": {"honorlabels": True}}, "honorlabels"),
        ({"podMonitor": {"targetLabels": ["a"]}}, "targetLabels"),
        ({"podMonitor": {"sampleLimit": "1000"}}, "sampleLimit"),
    ],
    ids=[
        "token-outside-volume",
        "unquoted-mode",
        "listen-port",
        "config-typo",
        "typo",
        "sm",
        "ca-typo",
        "ca-both",
        "ca-and-ca_bundle",
        "sidecar-mounts-typo",
        "sidecar-mount-no-name",
        "registry-typo",
        "probe-typo",
        "probe-two-handlers",
        "pdb-typo",
        "pdb-both",
        "pdb-word",
        "sm-typo",
        "pm-no-targetlabels",
        "pm-limit-string",
    ],
)
def test_render_refuses_values_that_would_break_the_pod(
    tmp_path: Path, values: Doc, message: str
) -> None:
    """Typos and values the pod cannot honour fail at render time, naming the culprit."""
    err = render_fails(tmp_path, {"apiKey": {"value": "k"}, **values})
    assert message in err


# ---- the embeddable named templates --------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Doc, ...]:
    """The example chart that embeds the sidecar, with the chart vendored as `helm dependency build` would."""
    chart = tmp_path_factory.mktemp("embedding") / "my-app"
    shutil.copytree(EMBEDDING_CHART, chart)
    shutil.copytree(CHART, chart / "charts" / "forestreet-sidecar")
    return render_chart(chart)


def test_embedding_chart_adds_the_sidecar_to_its_own_pod(embedding_docs: tuple[Doc, ...]) -> None:
    """Another chart's Deployment gets the native sidecar, its volumes and the read-only token mount."""
    deployments = of_kind(embedding_docs, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == ["release-name-my-app"]
    spec = deployments[0]["spec"]["template"]["spec"]
    c = sidecar_container(spec)
    assert c["restartPolicy"] == "Always"
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": PORT}
    (app,) = app_containers(spec)
    assert mounts_of(app, "forestreet-token") == [
        {"name": "forestreet-token", "mountPath": TOKEN_DIR, "readOnly": True}
    ]
    assert volume(spec, "forestreet-api-key")["secret"]["secretName"] == "forestreet-api-key"
    assert volume(spec, "forestreet-token")["emptyDir"]["medium"] == "Memory"


def test_embedding_chart_gets_the_config_map_and_nothing_else(
    embedding_docs: tuple[Doc, ...],
) -> None:
    """The embedded chart renders none of its own resources; the parent renders the ConfigMap."""
    kinds = sorted(d["kind"] for d in embedding_docs)
    assert kinds == ["ConfigMap", "Deployment"]
    cm = one(embedding_docs, "ConfigMap")
    spec = one(embedding_docs, "Deployment")["spec"]["template"]["spec"]
    assert volume(spec, "forestreet-config")["configMap"]["name"] == cm["metadata"]["name"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["token"]["mode"] == "0640"


def test_main_chart_deployment_uses_the_named_templates() -> None:
    """The chart's own Deployment is built from the same named templates another chart includes."""
    text = (CHART / "templates" / "deployment.yaml").read_text()
    for name in ("container", "volumes", "tokenMount", "podAnnotations"):
        assert f'include "forestreet-sidecar.{name}" $fs' in text
    assert (
        'include "forestreet-sidecar.configMap"'
        in (CHART / "templates" / "configmap.yaml").read_text()
    )


# ---- chart metadata, values and schema ------------------------------------------------------------


def test_chart_metadata() -> None:
    """apiVersion v2, Kubernetes >= 1.29 (native sidecars), and the image tag follows appVersion."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == values["sidecar"]["image"]["tag"] == "0.1.0"


def _schema_objects(node: Doc, path: str) -> Iterator[tuple[str, Doc]]:
    if node.get("type") == "object" and "properties" in node:
        yield path, node
        for key, child in node["properties"].items():
            yield from _schema_objects(child, f"{path}.{key}")


# Helm hands a parent chart's globals to this chart too, so `global` cannot reject unknown keys.
OPEN_SCHEMA_OBJECTS = {"values.global"}


def test_schema_closes_our_objects_and_describes_every_property() -> None:
    """Every object of ours rejects unknown keys, and every property has a description."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _schema_objects(schema, "values"):
        assert node.get("additionalProperties") is (path in OPEN_SCHEMA_OBJECTS), path
        for key, child in node["properties"].items():
            assert child.get("description"), f"{path}.{key}: no description"


def _value_keys_without_comment(lines: list[str], schema: Doc) -> list[str]:
    """Keys of values.yaml inside our schema objects with no comment line right above them."""
    missing: list[str] = []
    stack: list[tuple[int, str, Doc | None]] = []  # (indent, key, schema node of the key)
    block_indent: int | None = None
    for n, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(\s|$)", line)
        if not stripped or stripped.startswith("#") or not match:
            continue
        key = match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][2] if stack else schema
        props = parent.get("properties") if parent else None
        node = props.get(key) if props else None
        if props is not None and not lines[n - 1].strip().startswith("#"):
            missing.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, node))
        if re.search(r":\s*[|>][-+]?\s*$", line):
            block_indent = indent
    return missing


def test_values_yaml_has_a_comment_over_every_key() -> None:
    """Every key of values.yaml that belongs to the chart is documented by the line above it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert _value_keys_without_comment(lines, schema) == []


def test_ci_scenarios_exist() -> None:
    """Each scenario the CI renders is there."""
    names = {p.name for p in (CHART / "ci").glob("*-values.yaml")}
    assert {
        "default-values.yaml",
        "existing-secret-values.yaml",
        "monitoring-values.yaml",
        "embedded-values.yaml",
        "ca-bundle-values.yaml",
        "mirror-pdb-probes-values.yaml",
        "podmonitor-settings-values.yaml",
    } <= names


# ---- a private CA, extra sidecar mounts ------------------------------------------------------

CA_DIR = "/etc/forestreet-sidecar-ca"


@pytest.mark.parametrize(
    ("scenario", "kind", "name", "key"),
    [
        ("ca-bundle", "configMap", "corporate-ca", "ca-bundle.crt"),
        ("mirror-pdb-probes", "secret", "forestreet-ca", "ca.crt"),
    ],
    ids=["configmap", "secret"],
)
def test_ca_bundle_is_mounted_into_the_sidecar_and_set_as_api_ca_bundle(
    scenario: str, kind: str, name: str, key: str
) -> None:
    """caBundle mounts its ConfigMap or Secret read-only into the sidecar; api.ca_bundle names that file."""
    docs = render(scenario)
    spec = pod_spec(docs)
    (m,) = mounts_of(sidecar_container(spec), "forestreet-ca-bundle")
    assert m == {"name": "forestreet-ca-bundle", "mountPath": CA_DIR, "readOnly": True}
    source = volume(spec, "forestreet-ca-bundle")
    other = {"configMap": "secret", "secret": "configMap"}[kind]
    assert other not in source
    ref = source[kind]
    assert ref[{"configMap": "name", "secret": "secretName"}[kind]] == name
    (item,) = ref["items"]
    assert item["key"] == key
    assert sidecar_config(docs)["api"]["ca_bundle"] == f"{m['mountPath']}/{item['path']}"
    for app in app_containers(spec):
        assert mounts_of(app, "forestreet-ca-bundle") == [], "only the sidecar needs the CA"


def test_no_ca_bundle_by_default() -> None:
    """Without caBundle there is no CA volume, and api.ca_bundle stays unset (the system CAs)."""
    docs = render("default")
    spec = pod_spec(docs)
    assert "forestreet-ca-bundle" not in [v["name"] for v in spec["volumes"]]
    assert mounts_of(sidecar_container(spec), "forestreet-ca-bundle") == []
    assert "ca_bundle" not in sidecar_config(docs)["api"]


def test_ca_bundle_accepts_the_same_path_in_sidecar_config(tmp_path: Path) -> None:
    """Setting api.ca_bundle to the path caBundle mounts is not a conflict."""
    docs = render_values(
        tmp_path,
        {
            "apiKey": {"value": "k"},
            "caBundle": {"configMap": "ca"},
            "sidecar": {"config": {"api": {"ca_bundle": f"{CA_DIR}/ca-bundle.pem"}}},
        },
    )
    assert sidecar_config(docs)["api"]["ca_bundle"] == f"{CA_DIR}/ca-bundle.pem"


def test_sidecar_extra_volume_mounts_reach_the_sidecar_only() -> None:
    """sidecar.extraVolumeMounts are added to the sidecar after its own mounts; extraVolumes holds them."""
    spec = pod_spec(render("ca-bundle"))
    mounts = sidecar_container(spec)["volumeMounts"]
    assert mounts[-1] == {
        "name": "proxy-credential",
        "mountPath": "/var/run/secrets/forestreet-proxy",
        "readOnly": True,
    }
    assert [m["name"] for m in mounts[:3]] == [
        "forestreet-token",
        "forestreet-api-key",
        "forestreet-config",
    ]
    assert volume(spec, "proxy-credential")["secret"]["secretName"] == "forestreet-proxy"
    for app in app_containers(spec):
        assert mounts_of(app, "proxy-credential") == []


def test_embedding_chart_gets_the_ca_bundle_through_the_named_templates(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A parent chart's forestreet.caBundle gives volume, mount and api.ca_bundle; its global too."""
    chart = tmp_path_factory.mktemp("embedding-ca") / "my-app"
    shutil.copytree(EMBEDDING_CHART, chart)
    shutil.copytree(CHART, chart / "charts" / "forestreet-sidecar")
    values = {
        "global": {"imageRegistry": "mirror.example.com"},
        "forestreet": {"caBundle": {"secret": "corp-ca"}},
    }
    docs = render_values(tmp_path, values, chart)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (m,) = mounts_of(sidecar_container(spec), "forestreet-ca-bundle")
    assert m["readOnly"] is True
    (item,) = volume(spec, "forestreet-ca-bundle")["secret"]["items"]
    assert volume(spec, "forestreet-ca-bundle")["secret"]["secretName"] == "corp-ca"
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    assert config["api"]["ca_bundle"] == f"{m['mountPath']}/{item['path']}"
    assert (
        sidecar_container(spec)["image"] == "mirror.example.com/forestreet/forestreet-sidecar:0.1.0"
    )


# ---- image references ------------------------------------------------------------------------

REPO_PATH = "forestreet/forestreet-sidecar"
DIGEST = "sha256:" + "1" * 64


def test_default_images_are_unchanged() -> None:
    """The default sidecar image is ghcr.io/forestreet/forestreet-sidecar:<appVersion>."""
    spec = pod_spec(render("default"))
    assert sidecar_container(spec)["image"] == f"ghcr.io/{REPO_PATH}:0.1.0"
    assert app_containers(spec)[0]["image"] == "busybox:1.36"


@pytest.mark.parametrize(
    ("values", "sidecar_image", "app_image"),
    [
        ({"sidecar": {"image": {"registry": ""}}}, f"{REPO_PATH}:0.1.0", "busybox:1.36"),
        (
            {"sidecar": {"image": {"registry": "mirror.example.com"}}},
            f"mirror.example.com/{REPO_PATH}:0.1.0",
            "busybox:1.36",
        ),
        (
            {
                "global": {"imageRegistry": "global.example.com:5000"},
                "sidecar": {"image": {"registry": "mirror.example.com"}},
                "app": {"image": {"registry": "app.example.com"}},
            },
            f"global.example.com:5000/{REPO_PATH}:0.1.0",
            "global.example.com:5000/busybox:1.36",
        ),
        (
            {
                "global": {"imageRegistry": "global.example.com"},
                "sidecar": {"image": {"digest": DIGEST}},
            },
            f"global.example.com/{REPO_PATH}@{DIGEST}",
            "global.example.com/busybox:1.36",
        ),
        (
            {"sidecar": {"image": {"registry": "", "digest": DIGEST}}},
            f"{REPO_PATH}@{DIGEST}",
            "busybox:1.36",
        ),
        (
            {"app": {"image": {"registry": "app.example.com", "repository": "team/my-app"}}},
            f"ghcr.io/{REPO_PATH}:0.1.0",
            "app.example.com/team/my-app:1.36",
        ),
        # A repository that names its own host, as README's --set does, is used as it is.
        (
            {
                "global": {"imageRegistry": "global.example.com"},
                "sidecar": {"image": {"repository": "registry.example.com/forestreet-sidecar"}},
                "app": {"image": {"repository": "localhost:5000/my-app"}},
            },
            "registry.example.com/forestreet-sidecar:0.1.0",
            "localhost:5000/my-app:1.36",
        ),
    ],
    ids=[
        "no-registry",
        "registry",
        "global-wins",
        "global-digest",
        "digest-no-registry",
        "app-registry",
        "repository-with-host",
    ],
)
def test_image_reference(tmp_path: Path, values: Doc, sidecar_image: str, app_image: str) -> None:
    """[global.imageRegistry or image.registry/]repository, then @digest or :tag."""
    spec = pod_spec(render_values(tmp_path, {"apiKey": {"value": "k"}, **values}))
    assert sidecar_container(spec)["image"] == sidecar_image
    assert app_containers(spec)[0]["image"] == app_image


def test_test_pod_image_takes_the_global_registry(tmp_path: Path) -> None:
    """The helm test pod's image is mirrored too (rendered from a copy without the hook)."""
    chart = tmp_path / "hookless"
    shutil.copytree(CHART, chart)
    test_pod = chart / "templates" / "tests" / "test-readyz.yaml"
    text = test_pod.read_text()
    text = re.sub(r"^  annotations:\n(    helm\.sh/hook.*\n)+", "", text, flags=re.MULTILINE)
    test_pod.write_text(text)
    docs = render_values(
        tmp_path,
        {
            "apiKey": {"value": "k"},
            "service": {"enabled": True},
            "global": {"imageRegistry": "mirror.example.com"},
        },
        chart,
    )
    (pod,) = of_kind(docs, "Pod")
    assert pod["spec"]["containers"][0]["image"] == "mirror.example.com/busybox:1.36"


# ---- PodDisruptionBudget -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("mirror-pdb-probes", {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
        ("podmonitor-settings", {"maxUnavailable": "34%"}),
    ],
)
def test_pod_disruption_budget_when_enabled(scenario: str, expected: Doc) -> None:
    """The PDB selects the pods and carries the given minAvailable or maxUnavailable, only that."""
    docs = render(scenario)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    spec = dict(pdb["spec"])
    assert spec.pop("selector")["matchLabels"].items() <= pod_labels.items()
    assert spec == expected


def test_pod_disruption_budget_defaults_to_one_unavailable(tmp_path: Path) -> None:
    """Enabled with neither bound, at most one pod is evicted at a time; minAvailable 0 is kept."""
    docs = render_values(
        tmp_path, {"apiKey": {"value": "k"}, "podDisruptionBudget": {"enabled": True}}
    )
    spec = one(docs, "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in spec.items() if k != "selector"} == {"maxUnavailable": 1}
    docs = render_values(
        tmp_path,
        {"apiKey": {"value": "k"}, "podDisruptionBudget": {"enabled": True, "minAvailable": 0}},
    )
    spec = one(docs, "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in spec.items() if k != "selector"} == {"minAvailable": 0}


@pytest.mark.parametrize("scenario", ["default", "monitoring", "ca-bundle"])
def test_no_pod_disruption_budget_unless_enabled(scenario: str) -> None:
    """podDisruptionBudget is off by default."""
    assert of_kind(render(scenario), "PodDisruptionBudget") == []


# ---- probes ----------------------------------------------------------------------------------


def test_default_probes_are_unchanged() -> None:
    """The default probes: /readyz startup (150 x 2 s), /healthz liveness, /readyz readiness."""
    c = sidecar_container(pod_spec(render("default")))
    http = {"port": PORT}
    assert c["startupProbe"] == {
        "httpGet": {"path": "/readyz", **http},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 150,
    }
    assert c["livenessProbe"] == {
        "httpGet": {"path": "/healthz", **http},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/readyz", **http},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }


def test_probes_are_overridable() -> None:
    """A handler of one's own replaces the httpGet (tcpSocket) or is merged over it (httpGet)."""
    c = sidecar_container(pod_spec(render("mirror-pdb-probes")))
    assert c["startupProbe"] == {
        "httpGet": {"path": "/readyz", "port": PORT},
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
        "timeoutSeconds": 2,
        "failureThreshold": 300,
    }
    assert c["livenessProbe"] == {
        "tcpSocket": {"port": "fs-metrics"},
        "periodSeconds": 20,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": PORT, "scheme": "HTTP"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "successThreshold": 2,
        "failureThreshold": 3,
    }


def test_probe_can_be_replaced_by_exec_and_retargeted(tmp_path: Path) -> None:
    """exec replaces the default handler; an httpGet with only a path keeps the sidecar's port."""
    command = ["python3", "-c", "print()"]
    docs = render_values(
        tmp_path,
        {
            "apiKey": {"value": "k"},
            "sidecar": {
                "port": 9900,
                "startupProbe": {"exec": {"command": command}, "failureThreshold": 10},
                "livenessProbe": {"httpGet": {"path": "/readyz"}, "periodSeconds": 30},
            },
        },
    )
    c = sidecar_container(pod_spec(docs))
    assert c["startupProbe"] == {
        "exec": {"command": command},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 10,
    }
    assert c["livenessProbe"]["httpGet"] == {"path": "/readyz", "port": 9900}
    assert c["livenessProbe"]["periodSeconds"] == 30
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9900}


# ---- ServiceMonitor / PodMonitor settings -----------------------------------------------------


def test_service_monitor_settings_reach_the_spec() -> None:
    """namespace, jobLabel, targetLabels, podTargetLabels, honorLabels, sampleLimit, scheme, tlsConfig."""
    docs = render("mirror-pdb-probes")
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "monitoring"
    spec = sm["spec"]
    # In another namespace than the release's, it must still select the release's Service.
    assert spec["namespaceSelector"] == {
        "matchNames": [one(docs, "Service")["metadata"]["namespace"]]
    }
    assert spec["jobLabel"] == "app.kubernetes.io/instance"
    assert spec["targetLabels"] == ["app.kubernetes.io/part-of"]
    assert spec["podTargetLabels"] == ["app.kubernetes.io/version"]
    assert spec["sampleLimit"] == 1000000
    (endpoint,) = spec["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "caFile": "/etc/prom-certs/root-cert.pem",
        "certFile": "/etc/prom-certs/cert-chain.pem",
        "keyFile": "/etc/prom-certs/key.pem",
        "insecureSkipVerify": False,
    }
    assert endpoint["port"] == "fs-metrics"


def test_pod_monitor_settings_reach_the_spec() -> None:
    """namespace, jobLabel, podTargetLabels, honorLabels, sampleLimit and tlsConfig of the PodMonitor."""
    docs = render("podmonitor-settings")
    pm = one(docs, "PodMonitor")
    assert pm["metadata"]["namespace"] == "monitoring"
    spec = pm["spec"]
    assert spec["namespaceSelector"] == {
        "matchNames": [one(docs, "Deployment")["metadata"]["namespace"]]
    }
    assert spec["jobLabel"] == "app.kubernetes.io/instance"
    assert spec["podTargetLabels"] == ["app.kubernetes.io/version"]
    assert spec["sampleLimit"] == 5000
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["tlsConfig"] == {
        "insecureSkipVerify": False,
        "serverName": "forestreet-sidecar.example.com",
    }
    assert "scheme" not in endpoint


@pytest.mark.parametrize(
    ("scenario", "kind"), [("monitoring", "ServiceMonitor"), ("podmonitor", "PodMonitor")]
)
def test_monitor_defaults_are_unchanged(scenario: str, kind: str) -> None:
    """By default the monitor sits beside the pods, job label app.kubernetes.io/name, no limits."""
    docs = render(scenario)
    monitor = one(docs, kind)
    assert monitor["metadata"]["namespace"] == one(docs, "Deployment")["metadata"]["namespace"]
    spec = monitor["spec"]
    assert spec["jobLabel"] == "app.kubernetes.io/name"
    for absent in ("namespaceSelector", "targetLabels", "podTargetLabels", "sampleLimit"):
        assert absent not in spec
    (endpoint,) = spec.get("endpoints") or spec["podMetricsEndpoints"]
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}


def test_outputs_and_notify_reach_the_daemon_as_a_config_it_accepts(tmp_path: Path) -> None:
    """sidecar.config carries outputs and notify; the daemon's own loader takes the result."""
    from sidecar import config as config_module

    rendered = sidecar_config(render("outputs-notify"))
    assert [o["format"] for o in rendered["outputs"]] == ["env", "template"]
    assert rendered["notify"]["http"]["url"] == "http://127.0.0.1:8080/-/reload"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rendered))
    key = tmp_path / "api-key"
    key.write_text("a-key-for-the-chart-test")
    environ = {"FORESTREET_SIDECAR_API_KEY_FILE": str(key)}
    loaded = config_module.load(path, environ, {})
    assert loaded.notify.methods == ("http",)
    assert len(loaded.outputs) == 2
