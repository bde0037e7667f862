"""Every Kubernetes manifest under infra/ loads and hangs together: kinds, names, images, ports, storage,
auth, resources, and nothing exposed beyond the namespace."""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit

from tests.infra.conftest import K8S_FILES, ROOT, by_kind, pinned, pod_specs

KNOWN = {("v1", "Namespace"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"),
         ("apps/v1", "StatefulSet"), ("networking.k8s.io/v1", "NetworkPolicy"), ("ray.io/v1", "RayCluster"),
         ("ray.io/v1", "RayJob")}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)
NAMESPACE = "mcrlab"


def _containers(doc):
    return [(group, c) for group, spec in pod_specs(doc) for c in spec["containers"]]


def _env(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_manifest_file_loads_and_every_document_is_a_known_kind(docs):
    assert len(K8S_FILES) >= 5
    assert {f for f, _ in docs} == {f"{p.parent.name}/{p.name}" for p in K8S_FILES}, "a file with no document"
    for name, doc in docs:
        assert (doc.get("apiVersion"), doc.get("kind")) in KNOWN, f"{name}: {doc.get('apiVersion')} {doc.get('kind')}"
        assert doc["metadata"]["name"], name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {doc['metadata']['name']}"
    assert [d["metadata"]["name"] for d in by_kind(docs, "Namespace")] == [NAMESPACE]


def test_no_secret_is_committed(docs):
    assert not by_kind(docs, "Secret"), "Secrets are created with kubectl (infra/README.md), never committed"
    for _, doc in docs:
        for group, c in _containers(doc):
            for name, e in _env(c).items():
                if SECRET_NAME.search(name):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), f"{group}/{name}"


def test_raycluster_head_gpu_group_autoscaling_and_version(docs):
    (rc,) = by_kind(docs, "RayCluster")
    spec = rc["spec"]
    assert spec["rayVersion"] == pinned("ray")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs drivers, not trials"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert "gpu" in groups
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        assert g["maxReplicas"] >= 1, name
    gpu = groups["gpu"]["template"]["spec"]
    (container,) = gpu["containers"]
    for kind in ("requests", "limits"):
        assert int(container["resources"][kind]["nvidia.com/gpu"]) >= 1, kind
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu.get("tolerations", []))
    for name, g in groups.items():
        if name != "gpu":
            for c in g["template"]["spec"]["containers"]:
                assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), name


def test_one_platform_image_everywhere_matching_the_project_version(docs):
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    images = {c["image"] for _, doc in docs if doc["kind"] in ("RayCluster", "RayJob") for _, c in _containers(doc)}
    assert images == {f"registry.example.com/mcrlab/mcrlab:{version}-cuda"}
    (ml,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mlflow"]
    (c,) = ml["spec"]["template"]["spec"]["containers"]
    assert c["image"].endswith(f"/mlflow-server:{pinned('mlflow')}")


def test_every_container_requests_and_limits_resources(docs):
    for _, doc in docs:
        for group, c in _containers(doc):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{doc['metadata']['name']}/{group}: {kind}"
    auto = by_kind(docs, "RayCluster")[0]["spec"]["autoscalerOptions"]["resources"]
    assert {"cpu", "memory"} <= set(auto["requests"])


def test_ray_pods_have_token_auth_mlflow_address_and_shared_storage(docs):
    (rc,) = by_kind(docs, "RayCluster")
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "mlflow"]
    ml_port = svc["spec"]["ports"][0]["port"]
    claims = {p["metadata"]["name"]: p for p in by_kind(docs, "PersistentVolumeClaim")}
    for group, spec in pod_specs(rc):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            env = _env(c)
            assert env["RAY_AUTH_MODE"]["value"] == "token", group
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mcrlab-ray-token", group
            uri = urlsplit(env["MLFLOW_TRACKING_URI"]["value"])
            assert uri.hostname == f"mlflow.{NAMESPACE}.svc.cluster.local" and uri.port == ml_port, group
            (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/shared"]
            claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], "shared by every node"
    auto_env = {e["name"]: e for e in rc["spec"]["autoscalerOptions"]["env"]}
    assert auto_env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in auto_env
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001}


def test_rayjob_runs_an_existing_job_script_on_the_cluster_with_shared_storage(docs):
    (job,) = by_kind(docs, "RayJob")
    (rc,) = by_kind(docs, "RayCluster")
    spec = job["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python"
    image_root = "/home/ray/mcrlab/"
    script, space = argv[1], argv[2]
    assert script.startswith(image_root) and (ROOT / script[len(image_root):]).is_file()
    assert space.startswith(image_root) and (ROOT / space[len(image_root):]).is_file()
    assert argv[argv.index("--storage") + 1].startswith("/mnt/shared/")
    (sub,) = spec["submitterPodTemplate"]["spec"]["containers"]
    assert _env(sub)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mcrlab-ray-token"


def test_services_are_internal_and_select_existing_pods(docs):
    pod_labels = [spec_doc["spec"]["template"]["metadata"]["labels"]
                  for spec_doc in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet")]]
    for svc in by_kind(docs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), svc["metadata"]["name"]
    (rc,) = by_kind(docs, "RayCluster")
    assert rc["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    for workload in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet")]:
        assert workload["spec"]["selector"]["matchLabels"].items() <= \
            workload["spec"]["template"]["metadata"]["labels"].items()
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}], "same namespace only"


def test_mlflow_server_uses_postgres_and_an_artifact_volume(docs):
    (ml,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mlflow"]
    pod = ml["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args, env = c["args"], _env(c)
    backend = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    # the driver the mlflow-server image installs (SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3)
    assert backend.startswith("postgresql+psycopg2://") and "--backend-store-uri" not in args, "no password in argv"
    (pg_svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "mlflow-postgres"]
    assert env["MLFLOW_DB_HOST"]["value"] == f"mlflow-postgres.{NAMESPACE}.svc.cluster.local"
    assert backend.endswith(f":{pg_svc['spec']['ports'][0]['port']}/mlflow")
    (pg,) = by_kind(docs, "StatefulSet")
    pg_env = _env(pg["spec"]["template"]["spec"]["containers"][0])
    assert pg_env["POSTGRES_DB"]["value"] == "mlflow"
    for key in ("MLFLOW_DB_USER", "MLFLOW_DB_PASSWORD"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == env["MLFLOW_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
    dest = args[args.index("--artifacts-destination") + 1]
    assert "--serve-artifacts" in args
    assert any(m["mountPath"] == dest for m in c["volumeMounts"])
    port = int(args[args.index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port == c["readinessProbe"]["httpGet"]["port"]
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "mlflow"]
    assert svc["spec"]["ports"][0]["targetPort"] == port
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert f"mlflow.{NAMESPACE}.svc.cluster.local:{svc['spec']['ports'][0]['port']}" in allowed
    assert "*" not in allowed
