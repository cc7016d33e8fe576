"""cluster/: who may talk to the Ray clusters and what their pods may do (issue 22, item 10).

- Ray token authentication: the launcher clusters start every `ray start` with RAY_AUTH_MODE=token and
  the token from a file that file_mounts brings from outside the repository; the KubeRay clusters take
  it from a Secret (secretKeyRef) in every Ray container. No token is ever written in a file.
- NetworkPolicies isolate each Ray cluster's pods (Kubernetes selector semantics simulated by hand,
  on the labels KubeRay gives its pods), admitting only the dashboard / job port to submitters.
- Every container runs unprivileged; no pod mounts a Kubernetes API token, except that the autoscaler
  sidecar gets its own projected into it alone.
- MLflow: the Ray pods hold a non-admin run user; the admin stays in the server's pod, whose sidecar
  creates the run user through MLflow's auth API (run here against a fake server whose routes are read
  from the installed MLflow's own AuthServiceClient).
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import pytest
import yaml

from test_cluster_manifests import _crd_schema, _pruned_fields

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
RAY_PORTS = (6379, 8265, 10001, 8076, 12345)  # GCS, dashboard / job API, Ray Client, object manager, a worker
DASHBOARD = 8265
NS = "team"  # the namespace the manifests are applied in (they name none)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


def _installed(package: str) -> Path:
    """Folder of an installed package, found without importing it (ray and mlflow take seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        pytest.skip(f"{package} is not installed")
    return Path(spec.origin).parent


# --- Ray cluster launcher ---------------------------------------------------------------------------
def _env_of_ray_start(command: str) -> dict[str, str]:
    """Variables `ray start` runs with in one shell command: `A=b ray start` prefixes and earlier exports."""
    env: dict[str, str] = {}
    for segment in re.split(r";|&&|\|\||\n", command):
        words = shlex.split(segment)
        if words[:1] == ["export"]:
            env.update(w.split("=", 1) for w in words[1:] if "=" in w)
            continue
        i = 0
        while i < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i]):
            i += 1
        if words[i:i + 2] == ["ray", "start"]:
            return {**env, **dict(w.split("=", 1) for w in words[:i])}
    raise AssertionError(f"no `ray start` in {command!r}")


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_ray_start_uses_token_auth_from_a_file_outside_the_repository(name):
    text = (CLUSTER / name).read_text()
    cfg = yaml.safe_load(text)
    mounts = cfg.get("file_mounts") or {}
    token_paths = set()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if re.search(r"\bray start\b", c)]
        assert starts, f"cluster/{name}: no `ray start` in {key}"
        for command in starts:
            env = _env_of_ray_start(command)
            assert env.get("RAY_AUTH_MODE") == "token", f"cluster/{name} {key}: ray start without RAY_AUTH_MODE=token"
            assert "RAY_AUTH_TOKEN" not in env, f"cluster/{name}: the token itself on a command line"
            path = env.get("RAY_AUTH_TOKEN_PATH")
            assert path and path.startswith("/"), f"cluster/{name} {key}: no absolute RAY_AUTH_TOKEN_PATH"
            token_paths.add(path)
    assert len(token_paths) == 1, f"cluster/{name}: head and workers read different token files {token_paths}"
    (path,) = token_paths
    # the file reaches every node through file_mounts, from a path outside the synced checkout
    assert path in mounts, f"cluster/{name}: {path} is not a file_mounts target (the nodes would not have it)"
    local = mounts[path]
    assert local.startswith(("~/", "/")), f"cluster/{name}: token source {local!r} is relative, i.e. in the repository"
    assert not Path(os.path.expanduser(local)).resolve().is_relative_to(REPO.resolve())
    synced = [target for target, src in mounts.items() if src in (".", "./")]
    assert not any(path == t or path.startswith(t.rstrip("/") + "/") for t in synced), "token file inside the synced checkout"
    # no token value in the file; how to make one is documented
    assert "RAY_AUTH_TOKEN=" not in text and not re.search(r"\b[0-9a-fA-F]{32,}\b", text)
    assert "openssl rand -hex 32" in text and local.removeprefix("~/") in text
    # the variables are the ones the installed Ray reads
    ray = _installed("ray")
    assert 'AUTH_MODE_ENV_VAR = "RAY_AUTH_MODE"' in (ray / "_private/authentication/authentication_token_setup.py").read_text()
    assert "RAY_AUTH_TOKEN_PATH" in (ray / "exceptions.py").read_text()


# --- KubeRay: Ray objects and their pods -------------------------------------------------------------
def _ray_objects() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file:name, the object, its RayCluster spec) of every RayCluster and RayJob."""
    out = []
    for path, doc in _all_docs():
        if doc.get("kind") in ("RayCluster", "RayJob"):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            out.append((f"{path.name}:{doc['metadata']['name']}", doc, spec))
    assert {d["kind"] for _, d, _ in out} == {"RayCluster", "RayJob"}
    return out


def _cluster_name(doc: dict[str, Any]) -> str:
    """The RayCluster's name: a RayJob's cluster is `<rayjob>-<5 random characters>` (KubeRay)."""
    return doc["metadata"]["name"] + ("-q7x2k" if doc["kind"] == "RayJob" else "")


def _ray_pods(doc: dict[str, Any], spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(group, pod spec, labels as KubeRay sets them on the pod) of the head and every worker group."""
    groups = [("head", "head", spec["headGroupSpec"])] + [(g["groupName"], "worker", g) for g in spec.get("workerGroupSpecs", [])]
    for group, node_type, g in groups:
        labels = {"ray.io/is-ray-node": "yes", "app.kubernetes.io/name": "kuberay",
                  "app.kubernetes.io/created-by": "kuberay-operator"}
        labels.update((g["template"].get("metadata") or {}).get("labels") or {})
        labels.update({"ray.io/cluster": _cluster_name(doc), "ray.io/node-type": node_type,
                       "ray.io/group": "headgroup" if node_type == "head" else group})  # not overridable
        yield group, g["template"]["spec"], labels


def _submitter(doc: dict[str, Any]) -> Optional[tuple[dict[str, Any], dict[str, str]]]:
    """A RayJob's submitter pod (K8sJobMode): its template's spec and the labels KubeRay adds."""
    tpl = doc["spec"].get("submitterPodTemplate") if doc["kind"] == "RayJob" else None
    if tpl is None:
        return None
    labels = {**((tpl.get("metadata") or {}).get("labels") or {}), "ray.io/originated-from-cr-name": doc["metadata"]["name"],
              "ray.io/originated-from-crd": "RayJob", "app.kubernetes.io/created-by": "kuberay-operator"}
    return tpl["spec"], labels


def _ray_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(what, pod spec, container) of every container of every Ray pod, the RayJob submitter included."""
    for what, doc, spec in _ray_objects():
        for group, pod, _ in _ray_pods(doc, spec):
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield f"{what} {group}/{c['name']}", pod, c
        sub = _submitter(doc)
        if sub is not None:
            for c in sub[0]["containers"]:
                yield f"{what} submitter/{c['name']}", sub[0], c


def test_kuberay_ray_containers_take_the_token_from_a_secret():
    seen_submitter = False
    for what, doc, spec in _ray_objects():
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token", what
        secret = auth.get("secretName")
        assert secret, f"{what}: authOptions.secretName unset (the token Secret would be KubeRay's, per cluster name)"
        text = (KUBERAY / what.split(":")[0]).read_text()
        assert f"kubectl create secret generic {secret} --from-literal=auth_token=" in text, f"{what}: how {secret} is made"
        containers = [(w, c) for w, _, c in _ray_containers() if w.startswith(what + " ")]
        seen_submitter |= any(" submitter/" in w for w, _ in containers)
        for w, c in containers:
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{w}: RAY_AUTH_MODE"
            token = env.get("RAY_AUTH_TOKEN")
            assert token and "value" not in token, f"{w}: RAY_AUTH_TOKEN missing or a literal"
            assert token["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}, w
    assert seen_submitter, "the RayJob's submitter pod is not templated (its container would run as the image wants)"
    for path, doc in _all_docs():  # no token value anywhere
        for node in _walk(doc):
            if node.get("name") in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
                assert "value" not in node, f"{path.name}: {node['name']} set inline"
        assert not re.search(r"\b[0-9a-fA-F]{32,}\b", yaml.safe_dump(doc)), f"{path.name}: a token-like literal"


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_new_ray_fields_are_known_to_the_kuberay_crds():
    """What this hardening relies on is really in the CRDs' schemas (an unknown field is silently dropped)."""
    jsonschema = pytest.importorskip("jsonschema")
    for what, doc, spec in _ray_objects():
        relied_on = {"authOptions.secretName": spec["authOptions"].get("secretName"),
                     "autoscalerOptions.securityContext": spec["autoscalerOptions"].get("securityContext"),
                     "autoscalerOptions.volumeMounts": spec["autoscalerOptions"].get("volumeMounts")}
        for group, pod, _ in _ray_pods(doc, spec):
            relied_on[f"{group}.automountServiceAccountToken"] = pod.get("automountServiceAccountToken")
            relied_on[f"{group}.securityContext"] = pod.get("securityContext")
        if doc["kind"] == "RayJob":
            relied_on["submitterPodTemplate"] = doc["spec"].get("submitterPodTemplate")
        assert all(v is not None for v in relied_on.values()), f"{what}: unset: {[k for k, v in relied_on.items() if v is None]}"
        schema = _crd_schema(doc["kind"])
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        assert not errors, f"{what}:\n" + "\n".join(errors)
        assert not _pruned_fields(schema, doc), f"{what}: fields the {doc['kind']} CRD drops: {_pruned_fields(schema, doc)}"


# --- NetworkPolicies -------------------------------------------------------------------------------
_NP_SPEC = {"podSelector", "policyTypes", "ingress", "egress"}
_NP_RULE = {"from", "ports"}
_NP_PEER = {"podSelector", "namespaceSelector", "ipBlock"}
_NP_PORT = {"protocol", "port", "endPort"}
_SELECTOR = {"matchLabels", "matchExpressions"}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions; {} selects everything)."""
    assert set(selector) <= _SELECTOR, f"unknown label-selector fields {sorted(set(selector) - _SELECTOR)}"
    if any(labels.get(k) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, values = e["key"], e.get("values") or []
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[e["operator"]]:
            return False
    return True


def _policies() -> list[dict[str, Any]]:
    nps = [d for _, d in _all_docs() if d.get("kind") == "NetworkPolicy"]
    names = [d["metadata"]["name"] for d in nps]
    assert len(set(names)) == len(names), f"two NetworkPolicies of one name: {names}"
    for np_ in nps:
        assert np_["apiVersion"] == "networking.k8s.io/v1" and "namespace" not in np_["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", np_["metadata"]["name"])
        spec = np_["spec"]
        assert set(spec) <= _NP_SPEC and "Ingress" in spec["policyTypes"] and set(spec["policyTypes"]) <= {"Ingress", "Egress"}
        _selects(spec["podSelector"], {})  # only known selector fields
        for rule in spec.get("ingress") or []:
            assert set(rule) <= _NP_RULE and rule.get("from"), f"{np_['metadata']['name']}: a rule without `from` admits everyone"
            for peer in rule["from"]:
                assert set(peer) <= _NP_PEER and "ipBlock" not in peer, peer
                assert peer.get("podSelector"), f"{np_['metadata']['name']}: peer {peer} admits every pod of a namespace"
                if "namespaceSelector" in peer:  # a named namespace, not any
                    assert set(peer["namespaceSelector"]) == {"matchLabels"}
                    assert list(peer["namespaceSelector"]["matchLabels"]) == ["kubernetes.io/metadata.name"], peer
            for p in rule.get("ports", []):
                assert set(p) <= _NP_PORT and p.get("protocol", "TCP") == "TCP" and isinstance(p["port"], int), p
    return nps


def _admitted(policies: list[dict[str, Any]], dst: dict[str, str], src: dict[str, str], port: int, src_ns: str = NS) -> bool:
    """Whether a connection from a pod (labels ``src``, namespace ``src_ns``) to pod ``dst`` in NS on TCP
    ``port`` is allowed: as Kubernetes decides ingress (a pod no policy selects is not isolated)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], dst)]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress") or []:
            if "ports" in rule and not any(q["port"] <= port <= q.get("endPort", q["port"]) for q in rule["ports"]):
                continue
            for peer in rule["from"]:
                ns_ok = (_selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src_ns})
                         if "namespaceSelector" in peer else src_ns == NS)
                if ns_ok and _selects(peer["podSelector"], src):
                    return True
    return False


def test_network_policies_isolate_each_ray_cluster_and_admit_submitters_to_the_dashboard_only():
    policies = _policies()
    objects = _ray_objects()
    pods = {what: [labels for _, _, labels in _ray_pods(doc, spec)] for what, doc, spec in objects}
    assert sum(len(v) for v in pods.values()) >= 4
    server = next(d for _, d in _all_docs() if d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
    named_ns = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for np_ in policies
                for rule in np_["spec"].get("ingress") or [] for p in rule["from"] if "namespaceSelector" in p}
    for what, doc, spec in objects:
        for dst in pods[what]:
            assert any(_selects(p["spec"]["podSelector"], dst) for p in policies), f"{what}: pod {dst} is in no NetworkPolicy"
            for port in RAY_PORTS:
                # the cluster's own pods, on every port (Ray's ports are mostly random)
                for src in pods[what]:
                    assert _admitted(policies, dst, src, port), (what, src["ray.io/group"], dst["ray.io/group"], port)
                # nobody else: other Ray clusters, another team's Ray pod, the MLflow server, an arbitrary
                # pod, this cluster's labels copied in another namespace
                others = [s for w, v in pods.items() if w != what for s in v]
                for src in others + [server, {"app": "debug-shell"}, {"app.kubernetes.io/part-of": "bidpm"},
                                     {"ray.io/cluster": "someone-else", "ray.io/node-type": "worker",
                                      "app.kubernetes.io/part-of": "bidpm"}]:
                    assert not _admitted(policies, dst, src, port), f"{what}: {src} reaches port {port}"
                for src in pods[what]:
                    assert not _admitted(policies, dst, src, port, src_ns="other"), f"{what}: from another namespace"
        # submitters reach the head's dashboard / job API, and nothing else
        head = next(labels for labels in pods[what] if labels["ray.io/node-type"] == "head")
        submitters = [{"bidpm/ray-submitter": "true"}] if doc["kind"] == "RayCluster" else [_submitter(doc)[1]]
        for src in submitters:
            assert _admitted(policies, head, src, DASHBOARD), f"{what}: submitter {src} cannot reach {DASHBOARD}"
            for port in set(RAY_PORTS) - {DASHBOARD}:
                assert not _admitted(policies, head, src, port), f"{what}: submitter {src} reaches {port}"
        if doc["kind"] == "RayJob":  # the KubeRay operator polls the job's status on the dashboard
            operator = {"app.kubernetes.io/name": "kuberay-operator"}
            assert any(_admitted(policies, head, operator, DASHBOARD, src_ns=ns) for ns in named_ns), what
            assert not _admitted(policies, head, operator, DASHBOARD, src_ns="somewhere-else")
            assert not any(_admitted(policies, head, {"app": "x"}, DASHBOARD, src_ns=ns) for ns in named_ns)
            assert not any(_admitted(policies, head, operator, 6379, src_ns=ns) for ns in named_ns)
    # the MLflow server's own policy still admits every Ray pod, and the Ray policies leave the server alone
    assert all(_admitted(policies, server, src, 5000) for v in pods.values() for src in v)
    ray_policies = [d for p in ("raycluster.yaml", "rayjob.yaml") for d in _docs(KUBERAY / p) if d["kind"] == "NetworkPolicy"]
    assert len(ray_policies) == 2 and not any(_selects(p["spec"]["podSelector"], server) for p in ray_policies)


# --- pods: unprivileged, no API token ----------------------------------------------------------------
def _mlflow() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in _docs(KUBERAY / "mlflow-server.yaml")}


def _every_container() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(what, pod spec, container) of every container the manifests run, the autoscaler sidecar (in the
    head pod, from autoscalerOptions) and the MLflow server's pod included."""
    yield from _ray_containers()
    for what, doc, spec in _ray_objects():
        if spec.get("enableInTreeAutoscaling"):
            opts = spec.get("autoscalerOptions") or {}
            yield f"{what} head/autoscaler", spec["headGroupSpec"]["template"]["spec"], opts
    pod = _mlflow()["Deployment"]["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        yield f"mlflow-server.yaml/{c['name']}", pod, c


def test_every_container_runs_unprivileged():
    uids = set()
    for what, pod, c in _every_container():
        pod_sc, sc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        def effective(key):
            return sc.get(key, pod_sc.get(key))
        assert effective("runAsNonRoot") is True, f"{what}: runAsNonRoot"
        uid = effective("runAsUser")
        assert isinstance(uid, int) and uid > 0, f"{what}: runAsUser {uid!r}"
        uids.add(uid)
        assert sc.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation"
        assert sc.get("privileged") is not True, what
        caps = sc.get("capabilities") or {}
        assert "ALL" in caps.get("drop", []) and not caps.get("add"), f"{what}: capabilities {caps}"
        assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{what}: seccompProfile"
    assert len(uids) == 1, f"containers run as different users {uids}: files on the shared volume would not be shared"


def test_no_pod_mounts_a_kubernetes_api_token_but_the_autoscaler_gets_its_own():
    pods = []
    for what, doc, spec in _ray_objects():
        pods += [(f"{what} {group}", pod) for group, pod, _ in _ray_pods(doc, spec)]
        if (sub := _submitter(doc)) is not None:
            pods.append((f"{what} submitter", sub[0]))
    pods.append(("mlflow-server.yaml", _mlflow()["Deployment"]["spec"]["template"]["spec"]))
    for what, pod in pods:
        assert pod.get("automountServiceAccountToken") is False, f"{what}: automountServiceAccountToken"
    # where Ray's KubeRay node provider (the autoscaler) reads its credentials
    provider = (_installed("ray") / "autoscaler/_private/kuberay/node_provider.py").read_text()
    token_path = re.search(r'IN_CLUSTER_TOKEN_PATH = "([^"]+)"', provider).group(1)
    ca_path = re.search(r'IN_CLUSTER_CA_CERT_PATH = "([^"]+)"', provider).group(1)
    assert os.path.dirname(token_path) == os.path.dirname(ca_path)
    for what, doc, spec in _ray_objects():
        assert spec.get("enableInTreeAutoscaling"), what
        head = spec["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head.get("volumes", [])}
        token_volumes = {n for n, v in volumes.items()
                         if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", []))}
        mounts = [m for m in spec["autoscalerOptions"].get("volumeMounts", []) if m["name"] in token_volumes]
        assert len(mounts) == 1, f"{what}: the autoscaler gets no service account token"
        (m,) = mounts
        assert m["mountPath"].rstrip("/") == os.path.dirname(token_path) and m.get("readOnly") is True, m
        sources = volumes[m["name"]]["projected"]["sources"]
        files = {s["serviceAccountToken"]["path"] for s in sources if "serviceAccountToken" in s}
        files |= {i["path"] for s in sources if "configMap" in s for i in s["configMap"]["items"]}
        assert {os.path.basename(token_path), os.path.basename(ca_path)} <= files, files
        assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources)
        # ... and no Ray container (where jobs run) mounts it
        for w, pod, c in _ray_containers():
            if w.startswith(what + " "):
                assert not {x["name"] for x in c.get("volumeMounts", [])} & token_volumes, f"{w} mounts the API token"


# --- MLflow: the run user ------------------------------------------------------------------------------
def _secret_refs(node: Any) -> set[str]:
    """Names of every Secret an object refers to (env secretKeyRef, envFrom secretRef, secret volumes)."""
    refs = set()
    for d in _walk(node):
        for key in ("secretKeyRef", "secretRef"):
            if isinstance(d.get(key), dict):
                refs.add(d[key]["name"])
        if isinstance(d.get("secret"), dict) and "secretName" in d["secret"]:
            refs.add(d["secret"]["secretName"])
    return refs


def _admin_secrets() -> set[str]:
    (server,) = _mlflow()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return {e["valueFrom"]["secretKeyRef"]["name"] for e in server["env"] if e["name"].startswith("MLFLOW_AUTH_ADMIN_")}


def _run_user_secret() -> str:
    refs = set()
    for what, _, c in _ray_containers():
        env = {e["name"]: e for e in c.get("env", [])}
        if " submitter/" in what and "MLFLOW_TRACKING_USERNAME" not in env:
            continue  # the submitter only runs `ray job submit`
        for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == key, (what, name)
            refs.add(ref["name"])
    assert len(refs) == 1, f"the Ray pods log to MLflow as several users: {refs}"
    return refs.pop()


def test_ray_pods_hold_only_the_non_admin_mlflow_user():
    admin = _admin_secrets()
    assert admin, "the MLflow server has no admin Secret"
    run_user = _run_user_secret()
    assert run_user not in admin, f"the Ray pods hold the MLflow admin's Secret {run_user}"
    for what, doc, _ in _ray_objects():
        assert not _secret_refs(doc) & admin, f"{what} refers to the MLflow admin's Secret"
    for path, doc in _all_docs():  # the admin's Secret only in the server's Deployment
        if doc["kind"] != "Deployment":
            assert not _secret_refs(doc) & admin, f"{path.name} {doc['kind']} refers to the admin's Secret"
    text = (KUBERAY / "mlflow-server.yaml").read_text()
    assert f"kubectl create secret generic {run_user} " in text, "how the run user's Secret is made"


def _sidecar() -> tuple[dict[str, Any], dict[str, Any], str]:
    """The server pod's sidecar that creates the run user: (pod spec, container, script text)."""
    docs = _mlflow()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    makers = [c for c in pod.get("initContainers", []) if any(a.endswith(".py") for a in c.get("command", []) + c.get("args", []))]
    assert len(makers) == 1, "no sidecar in the MLflow server's pod that creates the run user"
    (c,) = makers
    assert c.get("restartPolicy") == "Always", "a native sidecar (restartPolicy: Always) runs alongside the server"
    (script,) = [a for a in c["command"] + c.get("args", []) if a.endswith(".py")]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if script.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount.get("readOnly") is True
    configmap = volumes[mount["name"]]["configMap"]["name"]
    assert configmap == docs["ConfigMap"]["metadata"]["name"]
    return pod, c, docs["ConfigMap"]["data"][script[len(mount["mountPath"].rstrip("/")) + 1:]]


def _mlflow_auth_api() -> dict[str, tuple[str, str]]:
    """AuthServiceClient method -> (HTTP method, path), read from the installed MLflow's source."""
    auth = _installed("mlflow") / "server" / "auth"
    paths = {}
    for node in ast.parse((auth / "routes.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "_get_rest_path":
            version = next((k.value.value for k in node.value.keywords if k.arg == "version"), 2)
            for target in node.targets:
                paths[target.id] = f"/api/{version}.0{node.value.args[0].value}"
    api = {}
    for cls in ast.walk(ast.parse((auth / "client.py").read_text())):
        if isinstance(cls, ast.ClassDef) and cls.name == "AuthServiceClient":
            for fn in cls.body:
                for call in ast.walk(fn):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "_request"
                            and isinstance(call.args[0], ast.Name) and call.args[0].id in paths):
                        api[fn.name] = (call.args[1].value, paths[call.args[0].id])
    needed = {"create_user", "update_user_password", "update_user_admin", "grant_user_permission", "revoke_user_permission"}
    assert needed <= set(api), f"this MLflow's AuthServiceClient lacks {needed - set(api)}"
    return api


class _FakeAuthServer:
    """MLflow's basic-auth user API, as far as the run-user script uses it, on loopback."""

    def __init__(self, admin: tuple[str, str], api: dict[str, tuple[str, str]], permissions: set[str], types: set[str]):
        self.users: dict[str, dict[str, Any]] = {admin[0]: {"password": admin[1], "is_admin": True}}
        self.grants: dict[tuple[str, str, str], str] = {}
        self.calls: list[tuple[str, str]] = []
        self.unknown: list[str] = []
        routes = {route: name for name, route in api.items()}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                path = urlparse(self.path).path
                if path == "/health" and self.command == "GET":
                    return self._reply(200, {})
                name = routes.get((self.command, path))
                if name is None:
                    fake.unknown.append(f"{self.command} {path}")
                    return self._reply(404, {"error_code": "ENDPOINT_NOT_FOUND"})
                fake.calls.append((name, self.headers.get("Authorization", "")))
                expected = "Basic " + base64.b64encode(f"{admin[0]}:{fake.users[admin[0]]['password']}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._reply(401, {"error_code": "UNAUTHENTICATED"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                user = body.get("username")
                if name == "create_user":
                    if user in fake.users:
                        return self._reply(400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"})
                    fake.users[user] = {"password": body["password"], "is_admin": False}
                    return self._reply(200, {"user": {"username": user, "is_admin": False}})
                if user not in fake.users:
                    return self._reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
                if name == "update_user_password":
                    fake.users[user]["password"] = body["password"]
                elif name == "update_user_admin":
                    fake.users[user]["is_admin"] = body["is_admin"]
                else:
                    key = (user, body["resource_type"], body["resource_id"])
                    if name == "grant_user_permission":
                        if body["permission"] not in permissions or body["resource_type"] not in types:
                            return self._reply(400, {"error_code": "INVALID_PARAMETER_VALUE"})
                        if key in fake.grants:
                            return self._reply(400, {"error_code": "RESOURCE_ALREADY_EXISTS"})
                        fake.grants[key] = body["permission"]
                    elif fake.grants.pop(key, None) is None:
                        return self._reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
                return self._reply(200, {})

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_the_mlflow_server_pod_creates_the_run_user_with_mlflows_auth_api(tmp_path):
    pod, c, script = _sidecar()
    admin_secret, run_secret = _admin_secrets(), _run_user_secret()
    secrets = {(s, "username"): "bidpm-admin" for s in admin_secret} | {(s, "password"): "admin-pw-0123456789" for s in admin_secret}
    secrets |= {(run_secret, "username"): "bidpm-run", (run_secret, "password"): "run-pw-0123456789"}
    refs = {ref["name"] for e in c["env"] if (ref := (e.get("valueFrom") or {}).get("secretKeyRef"))}
    assert refs == admin_secret | {run_secret}, f"the sidecar reads {refs}: the admin's and the Ray pods' run user Secret"
    (server,) = pod["containers"]
    port = next(p["containerPort"] for p in server["ports"])
    urls = [e["value"] for e in c["env"] if "value" in e and e["value"].startswith("http")]
    assert urls == [f"http://127.0.0.1:{port}"], f"the sidecar talks to its own pod's server: {urls}"

    auth_dir = _installed("mlflow") / "server" / "auth"
    permissions_py = (auth_dir / "permissions.py").read_text()
    permissions = set(re.findall(r'^\w+ = Permission\(\s*name="(\w+)"', permissions_py, re.M))
    types = set(re.findall(r'^RESOURCE_TYPE_\w+ = "(\w+)"', permissions_py, re.M))
    fake = _FakeAuthServer(("bidpm-admin", "admin-pw-0123456789"), _mlflow_auth_api(), permissions, types)
    path = tmp_path / "create_run_user.py"
    path.write_text(script)

    def run(values):
        env = {"PATH": os.environ.get("PATH", ""), "BIDPM_MLFLOW_WAIT_S": "20"}
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = fake.url if e["value"].startswith("http") else e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = values[(ref["name"], ref["key"])]
        return subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=60)

    try:
        first = run(secrets)
        assert first.returncode == 0, first.stdout + first.stderr
        assert fake.users["bidpm-run"] == {"password": "run-pw-0123456789", "is_admin": False}
        grants = dict(fake.grants)
        assert grants and {t for _, t, _ in grants} <= {"experiment", "registered_model"}, grants
        assert set(grants.values()) <= {"READ", "USE", "EDIT"}, f"the run user may manage or delete: {grants}"
        assert {k[0] for k in grants} == {"bidpm-run"} and fake.users["bidpm-admin"]["is_admin"] is True
        # a rerun (every pod start) converges: new password from the Secret, no admin, the same grants
        fake.users["bidpm-run"]["is_admin"] = True
        fake.grants[("bidpm-run", "experiment", "*")] = "MANAGE"
        again = run({**secrets, (run_secret, "password"): "run-pw-rotated-000"})
        assert again.returncode == 0, again.stdout + again.stderr
        assert fake.users["bidpm-run"] == {"password": "run-pw-rotated-000", "is_admin": False}
        assert fake.grants == grants
        # the run user must not be the admin (that would demote the admin)
        calls = len(fake.calls)
        same = run({**secrets, (run_secret, "username"): "bidpm-admin"})
        assert same.returncode != 0 and len(fake.calls) == calls and fake.users["bidpm-admin"]["is_admin"] is True
        # only MLflow's own endpoints, with the admin's credentials; no password in the log
        assert not fake.unknown, fake.unknown
        assert {name for name, _ in fake.calls} >= {"create_user", "update_user_password", "update_user_admin",
                                                    "grant_user_permission", "revoke_user_permission"}
        for out in (first, again, same):
            assert "pw-" not in out.stdout + out.stderr
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()
