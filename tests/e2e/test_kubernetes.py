"""deploy/kubernetes, validated without a cluster.

The tool: kubernetes-validate (PyPI), which ships the Kubernetes OpenAPI JSON schemas
inside the package, so validation needs no network at test time, and has a strict mode in
which an unknown or misspelt field is an error. (kubeconform, the usual choice, downloads
its schemas from GitHub at run time, which CI here cannot reach.) Each manifest is checked
against the oldest and the newest Kubernetes version it targets; then the things a schema
cannot see: the kustomization lists existing files, selectors match the pods' labels, the
probes use /healthz and /readyz on the admin port (--admin-listen), which the Service does
not expose, the stop sequence fits terminationGracePeriodSeconds, the pod runs as the
image's non-root user, the secret file lands where the image's configuration reads it, the
StatefulSet names a real headless Service, rolls one pod at a time and keeps its spool on a
persistent volume per replica, the Deployment keeps --spool off its emptyDir, broker
credentials come from a Secret, and every file a comment names exists. The environment the
manifests set is loaded by the daemon itself (--print-config)."""
import os
import re
import subprocess

import pytest
import yaml

from daemon import BIN, ROOT

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


def seconds(v):
    """A duration as the daemon reads it, in seconds (a bare number is seconds)."""
    m = re.fullmatch(r"(\d+)(ms|s)?", v)
    assert m, v
    return int(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def test_kustomization_lists_existing_manifests():
    (k,) = docs("kustomization.yaml")
    assert k["kind"] == "Kustomization"
    for r in k["resources"]:
        assert os.path.isfile(os.path.join(K8S, r)), r
    # the default: the StatefulSet with its headless Service; never a placeholder secret
    assert "statefulset.yaml" in k["resources"] and "service-headless.yaml" in k["resources"]
    assert "deployment.yaml" not in k["resources"]
    assert "secret.example.yaml" not in k["resources"]


def test_files_named_in_comments_exist():
    """kustomization.yaml once pointed at a README that did not exist."""
    for name in os.listdir(K8S):
        with open(os.path.join(K8S, name)) as f:
            comments = " ".join(l.split("#", 1)[1] for l in f if "#" in l)
        for ref in re.findall(r"[\w./-]+\.(?:yaml|md|conf)\b", comments):
            if ref.startswith("./") or (ref.endswith(".conf") and "/" not in ref):
                continue  # the user's files; almabridge.conf is the image's
            # a bare name is a file next to the manifests, a path is from the repository root
            where = os.path.join(ROOT if "/" in ref else K8S, ref)
            assert os.path.exists(where), f"{name} names {ref}, which does not exist"


def test_statefulset_rolls_one_at_a_time_with_a_volume_per_replica_for_the_spool():
    (sts,) = docs("statefulset.yaml")
    (headless,) = docs("service-headless.yaml")
    (svc,) = docs("service.yaml")
    (pdb,) = docs("poddisruptionbudget.yaml")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None" and svc["spec"].get("clusterIP") != "None"
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert "partition" not in sts["spec"]["updateStrategy"].get("rollingUpdate", {})
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1}
    assert sts["spec"]["replicas"] >= 2
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    spool = env["ALMABRIDGE_SPOOL"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    backing = [n for n, p in mounts.items() if spool.startswith(p.rstrip("/") + "/")]
    assert backing and backing[0] in claims, "the spool is not on a PersistentVolumeClaim"
    pod_vols = {v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    assert backing[0] not in pod_vols  # not shadowed by an emptyDir of the same name


def test_deployment_does_not_spool_on_emptydir():
    (d,) = docs("deployment.yaml")
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert "ALMABRIDGE_SPOOL" not in env_of(c)
    with open(os.path.join(K8S, "deployment.yaml")) as f:
        text = f.read()
    assert re.search(r"WARNING: do not turn --spool", text) and "emptyDir" in text


@pytest.mark.parametrize("name", WORKLOADS)
def test_broker_credentials_come_from_a_secret(name):
    (w,) = docs(name)
    (c,) = w["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    ref = refs["ALMABRIDGE_KAFKA_CONF"]
    example = {d["metadata"]["name"]: d for d in docs("secret.example.yaml")}
    assert ref["key"] in example[ref["name"]]["stringData"]
    assert not any("password" in (e.get("value") or "") for e in c["env"])
    # what the Secret holds is a list the daemon reads (newline-separated) and masks
    conf = example[ref["name"]]["stringData"][ref["key"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALMABRIDGE_")}
    env.update({k: v for k, v in env_of(c).items() if v is not None})
    env["ALMABRIDGE_KAFKA_CONF"] = conf
    env.pop("ALMABRIDGE_FILE", None)
    p = subprocess.run([BIN, "--print-config"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "sasl.mechanism=SCRAM-SHA-512" in p.stdout and "sasl.password=****" in p.stdout
    assert "replace-me" not in p.stdout


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
    # the probes on the admin port, which --admin-listen opens and the Service leaves out
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "admin"
    assert env["ALMABRIDGE_ADMIN_LISTEN"] == f"0.0.0.0:{ports['admin']}"
    (svc,) = docs("service.yaml")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    # preStop + drain grace + shutdown timeout, with a margin, before the SIGKILL
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = seconds(env["ALMABRIDGE_DRAIN_GRACE"])
    shutdown = seconds(env["ALMABRIDGE_SHUTDOWN_TIMEOUT"])
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
        assert env["ALMABRIDGE_SPOOL"].startswith("/var/lib/almabridge/")
        assert w["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # the daemon accepts the environment as the manifest sets it
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ALMABRIDGE_")}
    run_env.update({k: v for k, v in env.items() if v is not None})
    p = subprocess.run([BIN, "--print-config"], env=run_env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "admin-listen = 0.0.0.0:9090" in p.stdout
