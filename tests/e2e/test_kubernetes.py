"""deploy/kubernetes, validated without a cluster.

The tool: kubernetes-validate (PyPI), which ships the Kubernetes OpenAPI JSON schemas
inside the package, so validation needs no network at test time, and has a strict mode in
which an unknown or misspelt field is an error. (kubeconform, the usual choice, downloads
its schemas from GitHub at run time, which CI here cannot reach.) Each manifest is checked
against the oldest and the newest Kubernetes version it targets; then the things a schema
cannot see: the kustomization lists existing files, selectors match the pods' labels, the
probes use /healthz and /readyz, the stop sequence fits terminationGracePeriodSeconds, the
pod runs as the image's non-root user, and the secret file lands where the image's
configuration reads it."""
import os
import re

import pytest
import yaml

from daemon import ROOT

try:
    import kubernetes_validate
except ImportError as e:  # never skipped: make setup-test installs it
    kubernetes_validate = None
    IMPORT_ERROR = e

K8S = os.path.join(ROOT, "deploy", "kubernetes")
VERSIONS = ("1.30.0", "1.37.0")  # supported Kubernetes releases, oldest and newest
WORKLOADS = ("deployment.yaml", "statefulset.yaml")


def docs(name):
    with open(os.path.join(K8S, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def manifests():
    return sorted(f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", manifests())
def test_manifest_matches_the_kubernetes_schema(name, version):
    assert kubernetes_validate, f"kubernetes-validate is not installed: {IMPORT_ERROR}"
    for doc in docs(name):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:  # kubernetes_validate's and jsonschema's errors
            where = "/".join(map(str, getattr(e, "path", [])))
            pytest.fail(f"{name} ({doc['kind']}) against Kubernetes {version}: "
                        f"{getattr(e, 'message', e)} at {where}")


def test_kustomization_lists_existing_manifests():
    (k,) = docs("kustomization.yaml")
    assert k["kind"] == "Kustomization"
    for r in k["resources"]:
        assert os.path.isfile(os.path.join(K8S, r)), r
    assert "deployment.yaml" in k["resources"] and "secret.example.yaml" not in k["resources"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_fits_the_daemon(name):
    (w,) = docs(name)
    pod = w["spec"]["template"]["spec"]
    labels = w["spec"]["template"]["metadata"]["labels"]
    assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for other in ("service.yaml", "poddisruptionbudget.yaml"):
        (o,) = docs(other)
        sel = o["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel.items() <= labels.items(), other
    (c,) = pod["containers"]
    env = env_of(c)

    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # preStop + drain grace + shutdown timeout, with a margin, before the SIGKILL
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain, shutdown = int(env["ALMABRIDGE_DRAIN_GRACE"]), int(env["ALMABRIDGE_SHUTDOWN_TIMEOUT"])
    assert pre_stop + drain + shutdown + 5 <= pod["terminationGracePeriodSeconds"]
    # readiness notices the drain well inside the grace period
    r = c["readinessProbe"]
    assert r["periodSeconds"] * r["failureThreshold"] + r["timeoutSeconds"] <= drain

    # non-root: the image's user (docker/Dockerfile's numeric USER)
    with open(os.path.join(ROOT, "docker", "Dockerfile")) as f:
        uid = re.search(r"^USER (\d+):(\d+)$", f.read(), re.M)
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == int(uid.group(1))
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]

    # the secret file where docker/almabridge.conf reads it
    with open(os.path.join(ROOT, "docker", "almabridge.conf")) as f:
        secret_file = re.search(r"^secret-file = (\S+)$", f.read(), re.M).group(1)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    item = vols["secrets"]["secret"]["items"][0]
    assert os.path.join(mounts["secrets"], item["path"]) == secret_file
    assert c["args"] == ["--config", "/etc/almabridge/almabridge.conf"]
    assert mounts["data"] == "/var/lib/almabridge"
    if w["kind"] == "StatefulSet":
        assert env["ALMABRIDGE_FILE"].startswith("/var/lib/almabridge/")
        assert w["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
