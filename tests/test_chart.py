"""The Helm chart: rendered and linted through the Helm SDK, every object
validated against the Kubernetes schemas (kubernetes-validate, strict), the
prometheus-operator objects against schemas derived from the operator's CRDs,
and the rendered shards.yaml against the watcher's own config loader."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from tests.helm_support import (
    CHART,
    FULL_VALUES,
    FULLNAME,
    NAMESPACE,
    objects,
    one,
    render,
    require_module,
)
from watcher import config

pytestmark = pytest.mark.integration

KUBE_VERSION = "1.31.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
VALUE_SETS = {"default": {}, "full": FULL_VALUES}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def case(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, objects(VALUE_SETS[name])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str) -> None:
    helm = require_module("helm_python", "helm-python-sdk")
    report = helm.lint(
        str(CHART),
        VALUE_SETS[name],
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    assert report["errors"] == []
    # Severity 1 is info ("icon is recommended"); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_kinds(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = case
    kinds = sorted(o["kind"] for o in objs)
    if name == "default":
        assert kinds == [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    else:
        assert kinds == [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]


def test_every_object_validates_strictly(case: tuple[str, list[dict[str, Any]]]) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    _, objs = case
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            # kubernetes-validate ships no CRD schemas: it raises SchemaNotFoundError
            # (the CLI only warns). Those are checked in test_crd_objects_validate.
            with pytest.raises(kv.SchemaNotFoundError):
                kv.validate(obj, KUBE_VERSION, strict=True)
            continue
        kv.validate(obj, KUBE_VERSION, strict=True)


def test_kubernetes_validate_cli_strict(
    case: tuple[str, list[dict[str, Any]]], tmp_path: Any
) -> None:
    """The command line too, on the whole render, as an SRE would run it."""
    import subprocess
    import sys

    import yaml

    require_module("kubernetes_validate", "kubernetes-validate")
    _, objs = case
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(objs), encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBE_VERSION,
            str(manifest),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("INFO") for line in lines) == sum(
        o["kind"] not in CRD_KINDS for o in objs
    )
    # Only the CRD objects are not checked by kubernetes-validate.
    warned = [line for line in lines if line.startswith("WARN")]
    assert len(warned) == sum(o["kind"] in CRD_KINDS for o in objs)
    assert all("ServiceMonitor" in w or "PrometheusRule" in w for w in warned)


def _forbid_unknown(schema: Any) -> Any:
    """Strict like kubernetes-validate --strict: objects with properties allow no others."""
    if isinstance(schema, dict):
        fixed = {k: _forbid_unknown(v) for k, v in schema.items()}
        pattern = fixed.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            # Go's RE2 takes inline flags anywhere; Python only at the start.
            fixed["pattern"] = "(?i)^" + pattern[len("^(?i)") :]
        if "properties" in fixed and "additionalProperties" not in fixed:
            fixed["additionalProperties"] = False
        return fixed
    if isinstance(schema, list):
        return [_forbid_unknown(v) for v in schema]
    return schema


@cache
def _crd_schema(kind: str) -> dict[str, Any]:
    """JSON schema of a prometheus-operator kind, from the models PyPI's
    cloudcoil-models-prometheus-operator generates from the operator's CRDs."""
    models = require_module(
        "cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator"
    )
    model = getattr(models, kind)
    schema: dict[str, Any] = _forbid_unknown(model.model_json_schema(by_alias=True))
    return schema


def test_crd_objects_validate(case: tuple[str, list[dict[str, Any]]]) -> None:
    jsonschema = require_module("jsonschema", "jsonschema")
    name, objs = case
    crds = [o for o in objs if o["kind"] in CRD_KINDS]
    assert len(crds) == (0 if name == "default" else 2)
    for obj in crds:
        jsonschema.validate(obj, _crd_schema(obj["kind"]))
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"


def test_crd_schema_is_strict() -> None:
    """The derived schema does catch a misspelt field (so the check above means something)."""
    jsonschema = require_module("jsonschema", "jsonschema")
    monitor = one(objects(FULL_VALUES), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, _crd_schema("ServiceMonitor"))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_configmap_is_a_valid_shards_yaml(name: str) -> None:
    values = VALUE_SETS[name]
    objs = objects(values)
    text = one(objs, "ConfigMap", FULLNAME)["data"]["shards.yaml"]
    cfg = config.load_text(text, "configmap:shards.yaml", environ={})
    deployment = one(objs, "Deployment", FULLNAME)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert cfg.git.workdir == mounts["cache"] == "/var/cache/watcher"
    assert container["ports"] == [
        {"name": "http", "containerPort": cfg.server.port, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["args"] == ["run", "--config", "/etc/watcher/config/shards.yaml"]
    assert mounts["config"] == "/etc/watcher/config"
    if name == "default":
        assert cfg.shards == 16 and cfg.interval == 120 and cfg.redis.url == ""
        assert cfg.limits["gcr"].cap == 9500
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    else:
        assert cfg.shards == 32 and cfg.interval == 90 and cfg.server.port == 9090
        assert cfg.redis.url == f"redis://{FULLNAME}-redis:6379/0"
        assert cfg.limits["gcr"].requests == 1_000_000  # not 1e+06
        assert cfg.registry_for("registry.internal:5000").auth == "basic"
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        redis_svc = one(objs, "Service", f"{FULLNAME}-redis")
        assert redis_svc["spec"]["ports"][0]["port"] == 6379


def test_deployment_is_locked_down(case: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = case
    for deployment in (o for o in objs if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "resources" in container and container["resources"]["limits"]["memory"]
        # Every writable path is an emptyDir.
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in pod["containers"][0]["volumeMounts"]:
            if not mount.get("readOnly"):
                assert "emptyDir" in volumes[mount["name"]], mount


def test_git_over_ssh_verifies_host_keys(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = case
    deployment = one(objs, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GIT_SSH_COMMAND"]["value"] == (
        "ssh -i /etc/watcher/git/ssh-privatekey"
        " -o UserKnownHostsFile=/etc/watcher/git/known_hosts -o StrictHostKeyChecking=yes"
    )
    assert env["HOME"]["value"] == "/tmp" and env["XDG_CACHE_HOME"]["value"] == "/tmp/.cache"
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes["git-credentials"]["secret"]
    assert secret["secretName"] == f"{FULLNAME}-git"
    assert {i["key"] for i in secret["items"]} == {"ssh-privatekey", "known_hosts"}
    assert secret["defaultMode"] == 0o440
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["git-credentials"] == {
        "name": "git-credentials",
        "mountPath": "/etc/watcher/git",
        "readOnly": True,
    }
    if name == "full":
        created = one(objs, "Secret", f"{FULLNAME}-git")
        assert created["type"] == "kubernetes.io/ssh-auth"
        assert created["stringData"]["known_hosts"].startswith("github.com ssh-ed25519 ")
        assert {"REGISTRY_USER", "REGISTRY_PASSWORD"} <= set(env)


def test_service_account_and_monitoring(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = case
    account = one(objs, "ServiceAccount")
    service = one(objs, "Service", FULLNAME)
    deployment = one(objs, "Deployment", FULLNAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )
    if name == "default":
        assert "annotations" not in account["metadata"]
        return
    assert account["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "image-watcher@acme-ci.iam.gserviceaccount.com"
    }
    monitor = one(objs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The redis pods are not behind the watcher's Service.
    redis = one(objs, "Deployment", f"{FULLNAME}-redis")
    assert (
        not service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )


def test_dashboard_configmap_carries_the_generated_json() -> None:
    objs = objects(FULL_VALUES)
    board = one(objs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = (CHART / "dashboards" / "image-watcher.json").read_text(encoding="utf-8")
    assert json.loads(board["data"]["image-watcher.json"]) == json.loads(committed)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "replicaCount > 1 needs Redis"),
        ({"gitCredentials": {"create": True, "sshPrivateKey": "k"}}, "knownHosts is required"),
        (
            {"prometheusRule": {"enabled": True}, "shards": {"interval": "2 minutes"}},
            "not a duration",
        ),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    helm = require_module("helm_python", "helm-python-sdk")
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_replicas_with_external_redis_secret() -> None:
    objs = objects({"replicaCount": 2, "externalRedis": {"existingSecret": "redis-auth"}})
    container = one(objs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["WATCHER_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis-auth", "key": "redis-url"}
    }
