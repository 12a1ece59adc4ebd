"""Every deployment manifest is parsed and validated, so a typo fails CI.

- deploy/k8s/*.yaml: each object is deserialized into the `kubernetes` package's API model for
  its kind and serialized back; anything the model does not know (a misspelt field) is missing
  from the round trip and reported with its path. Then what matters is checked: GPU resource,
  readiness on /ready, liveness on /health, the API key and the store URL from Secrets,
  non-root, the Service selecting the Deployment's pods on its named port.
- docker/compose.yaml: validated against the Compose specification's JSON schema
  (check-jsonschema's vendored copy), then the same essentials.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "Secret"): "V1Secret",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
}


def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def unknown_fields(original: Any, round_trip: Any, path: str = "") -> list[str]:
    """Paths present in `original` but lost in the model round trip."""
    if isinstance(original, dict):
        lost = []
        for key, value in original.items():
            if not isinstance(round_trip, dict) or key not in round_trip:
                lost.append(f"{path}.{key}")
            else:
                lost += unknown_fields(value, round_trip[key], f"{path}.{key}")
        return lost
    if isinstance(original, list):
        return [
            p
            for i, (a, b) in enumerate(zip(original, round_trip or [], strict=False))
            for p in unknown_fields(a, b, f"{path}[{i}]")
        ]
    return []


def validate_k8s(obj: dict[str, Any]) -> Any:
    """The API model of `obj`; AssertionError naming every field the model does not know."""
    from kubernetes.client import ApiClient

    model = MODELS.get((obj.get("apiVersion"), obj.get("kind")))
    assert model, f"no validator for {obj.get('apiVersion')}/{obj.get('kind')}"
    client = ApiClient()
    typed = client._ApiClient__deserialize(obj, model)  # the models' own (de)serializer
    back = client.sanitize_for_serialization(typed)
    lost = unknown_fields(obj, back)
    assert not lost, f"{obj['kind']} {obj['metadata']['name']}: unknown fields {lost}"
    return typed


def test_every_k8s_manifest_validates() -> None:
    objects = k8s_objects()
    assert {o["kind"] for o in objects} == {
        "Deployment", "Service", "Secret", "PersistentVolumeClaim"
    }  # fmt: skip
    for obj in objects:
        validate_k8s(obj)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_a_typo_is_caught() -> None:
    deployment = next(o for o in k8s_objects() if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate_k8s(deployment)


def test_deployment_essentials() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in k8s_objects()}
    deployment = validate_k8s(objects[("Deployment", "selfreward")])
    pod = deployment.spec.template.spec
    (container,) = pod.containers
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.readiness_probe.http_get.path == "/ready"
    assert container.liveness_probe.http_get.path == "/health"
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user != 0
    env = {e.name: e for e in container.env}
    secrets = {(s.metadata.name): s for s in (validate_k8s(o) for o in objects.values())
               if s.kind == "Secret"}  # fmt: skip
    for var, secret in (("SELFREWARD_API_KEY", "selfreward-api-key"),
                        ("SELFREWARD_STORE", "selfreward-postgres")):  # fmt: skip
        ref = env[var].value_from.secret_key_ref
        assert ref.name == secret and ref.key in secrets[secret].string_data
    assert secrets["selfreward-postgres"].string_data["url"].startswith("postgresql://")
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    claim = {v.name: v for v in pod.volumes}[mounts[env["SELFREWARD_ADAPTER_STORE"].value]]
    assert claim.persistent_volume_claim.claim_name == "selfreward-adapters"
    service = validate_k8s(objects[("Service", "selfreward")])
    assert service.spec.selector.items() <= deployment.spec.template.metadata.labels.items()
    assert service.spec.ports[0].target_port in {p.name for p in container.ports}


def test_compose_file_validates() -> None:
    compose = ROOT / "docker" / "compose.yaml"
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(compose)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    spec = yaml.safe_load(compose.read_text())
    service, postgres = spec["services"]["selfreward"], spec["services"]["postgres"]
    (gpu,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"]
    assert "/health" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert service["environment"]["SELFREWARD_STORE"].startswith("postgresql://")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert {"adapters", "pgdata"} <= set(spec["volumes"])
