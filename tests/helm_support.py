"""Rendering the chart in helm/ for the chart, alert and dashboard tests.

The chart is rendered and linted in-process through the Helm SDK (PyPI
``helm-python-sdk``: Helm v4's Go SDK behind a C ABI, bundled in the wheel as
``libhelm_c.so``), so no ``helm`` binary is involved. A missing tool fails
the test with the install hint: nothing is skipped.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm"
RELEASE = "watcher"
NAMESPACE = "gitops"
FULLNAME = f"{RELEASE}-image-tag-watcher"
INSTALL_HINT = "install the test extra: .venv/bin/pip install -e '.[test]' (or bash .ci/install)"


def require_module(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{package} is required ({exc}); {INSTALL_HINT}", pytrace=False)


def require_binary(name: str, debian_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is required: apt-get install -y --no-install-recommends {debian_package}",
            pytrace=False,
        )
    return path


def helm() -> Any:
    return require_module("helm_python", "helm-python-sdk")


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Rendered templates by path, as `helm template watcher ./helm -n gitops` would."""
    return dict(_render(json.dumps(values or {}, sort_keys=True)))


@functools.cache
def _render(values_json: str) -> tuple[tuple[str, str], ...]:
    sdk = helm()
    with sdk.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(
            json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return tuple(sorted(rendered.items()))


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded)."""
    import yaml

    found: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


# Non-default values that switch every optional part on.
FULL_VALUES: dict[str, Any] = {
    "replicaCount": 3,
    "redis": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "additionalAlertLabels": {"team": "platform"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}},
    "gitCredentials": {
        "create": True,
        "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n",
        "knownHosts": "github.com ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    },
    "serviceAccount": {"gcpServiceAccount": "image-watcher@acme-ci.iam.gserviceaccount.com"},
    "image": {"repository": "europe-docker.pkg.dev/acme/images/image-tag-watcher", "tag": "1.2.3"},
    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
    ],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/component": "watcher"}
                        },
                    },
                }
            ]
        }
    },
    "extraEnv": [
        {
            "name": "REGISTRY_USER",
            "valueFrom": {"secretKeyRef": {"name": "registry-credentials", "key": "username"}},
        },
        {
            "name": "REGISTRY_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "registry-credentials", "key": "password"}},
        },
    ],
    "shards": {
        "shards": 32,
        "interval": "90s",
        "limits": {"gcr": {"requests": 1000000, "per": "10m", "headroom": "10%"}},
        "registries": [
            {"host": "*.gcr.io", "api": "google", "auth": "google", "limit": "gcr"},
            {
                "host": "registry.internal:5000",
                "api": "v2",
                "auth": "basic",
                "username_env": "REGISTRY_USER",
                "password_env": "REGISTRY_PASSWORD",
            },
        ],
        "server": {"port": 9090},
    },
    "service": {"port": 9090},
}


def load_generator() -> ModuleType:
    """helm/dashboard/generate.py as a module (it lives with the chart, not in watcher/)."""
    require_module("grafana_foundation_sdk", "grafana-foundation-sdk")
    name = "image_watcher_dashboard"
    if name in sys.modules:
        return sys.modules[name]
    path = CHART / "dashboard" / "generate.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses resolve their annotations through it.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
