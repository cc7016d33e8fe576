"""cluster/: KubeRay manifests against the published CRD schemas, launcher YAMLs against Ray's own
cluster schema, and the cross-file wiring (volume claims, MLflow service, job commands, exclusions)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"  # as tests/conftest.py: data next to the checkout, absent in a user clone

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRD_DIR = SHARED / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
RAY_VERSION_IN_MANIFESTS = "2.60.0"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_kuberay_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _docs(path):
            yield path, doc


def _crd_schema(kind: str) -> dict[str, Any]:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRD_DIR} (../shared is absent in this checkout)")
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strip_extensions(v1["schema"]["openAPIV3Schema"])


def _strip_extensions(node: Any) -> Any:
    """Drop ``x-kubernetes-*`` keys (Kubernetes extensions, not JSON Schema)."""
    if isinstance(node, dict):
        return {k: _strip_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_strip_extensions(v) for v in node]
    return node


def _pruned_fields(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields the API server would silently drop (not in the structural schema): typos, guessed names.

    jsonschema alone cannot see them because CRD schemas do not say ``additionalProperties: false``.
    """
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                out += _pruned_fields(props[k], v, f"{path}.{k}")
            elif isinstance(extra, dict):
                out += _pruned_fields(extra, v, f"{path}.{k}")
            elif props is not None and extra is not True:
                out.append(f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += _pruned_fields(schema["items"], v, f"{path}[{i}]")
    return out


def _ray_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in _all_kuberay_docs() if d.get("apiVersion") == "ray.io/v1"]


def _cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, doc in _ray_docs():
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        yield f"{path.name}:{doc['metadata']['name']}", spec


def _pod_specs(cluster_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["template"]["spec"]


# --- KubeRay: RayCluster / RayJob against the CRDs ------------------------------------------------
def test_kuberay_folder_has_the_expected_objects():
    kinds = {(p.name, d["kind"]) for p, d in _all_kuberay_docs()}
    assert {("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob"), ("mlflow-server.yaml", "Deployment"),
            ("mlflow-server.yaml", "Service"), ("storage.yaml", "PersistentVolumeClaim")} <= kinds


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_kuberay_manifests_validate_against_crd_schema(kind):
    jsonschema = pytest.importorskip("jsonschema")
    schema = _crd_schema(kind)
    docs = [(p, d) for p, d in _ray_docs() if d["kind"] == kind]
    assert docs, f"no {kind} under {KUBERAY}"
    validator = jsonschema.Draft7Validator(schema)
    for path, doc in docs:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name} is not a valid {kind}:\n" + "\n".join(errors)
        pruned = _pruned_fields(schema, doc)
        assert not pruned, f"{path.name}: fields unknown to the {kind} CRD (would be dropped): {pruned}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_pruning_check_catches_a_misspelt_field():
    """The unknown-field walk is what catches guessed field names; make sure it bites."""
    schema = _crd_schema("RayCluster")
    (doc,) = [d for p, d in _ray_docs() if d["kind"] == "RayCluster"]
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["enableInTreeAutoscaler"] = True
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert sorted(_pruned_fields(schema, bad)) == [".spec.enableInTreeAutoscaler", ".spec.workerGroupSpecs[0].maxReplica"]


def test_ray_clusters_autoscale_gpu_workers_with_token_auth():
    for name, spec in _cluster_specs():
        assert spec["rayVersion"] == RAY_VERSION_IN_MANIFESTS, name
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["authOptions"]["mode"] == "token", name
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert gpu_groups, f"{name}: no GPU worker group"
        for g in spec["workerGroupSpecs"]:
            assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], (name, g["groupName"])
        assert max(g["maxReplicas"] for g in gpu_groups) > 0
        for pod in _pod_specs(spec):
            for c in pod["containers"]:
                assert RAY_VERSION_IN_MANIFESTS in c["image"], f"{name}: image {c['image']} is not Ray {RAY_VERSION_IN_MANIFESTS}"
                lim, req = c["resources"]["limits"], c["resources"]["requests"]
                assert lim == req, f"{name}/{c['name']}: Ray advertises limits; keep requests equal"


def test_autoscaler_options_scale_gpu_groups_from_zero_and_rayjob_cleans_up():
    """Issue 14: idle GPU pods go away, GPU groups start at 0, a finished RayJob's cluster is deleted."""
    for name, spec in _cluster_specs():
        opts = spec["autoscalerOptions"]
        assert 0 < opts["idleTimeoutSeconds"] <= 600, name
        assert opts["upscalingMode"] in ("Default", "Conservative", "Aggressive"), name
        assert opts["resources"]["limits"] == opts["resources"]["requests"], name
        for g in spec["workerGroupSpecs"]:
            if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]:
                assert g["minReplicas"] == 0 and g.get("replicas", 0) == 0, (name, g["groupName"])
    (job,) = [d for _, d in _ray_docs() if d["kind"] == "RayJob"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0


def test_ray_version_matches_installed_ray():
    ray = pytest.importorskip("ray")
    assert ray.__version__ == RAY_VERSION_IN_MANIFESTS, (
        f"cluster manifests pin Ray {RAY_VERSION_IN_MANIFESTS} but this environment has {ray.__version__}: "
        "client and cluster must run the same Ray")


def test_every_volume_claim_is_defined_and_mounted():
    pvcs = {d["metadata"]["name"] for _, d in _all_kuberay_docs() if d["kind"] == "PersistentVolumeClaim"}
    pods = [spec for _, spec in _cluster_specs() for spec in _pod_specs(spec)]
    pods += [d["spec"]["template"]["spec"] for _, d in _all_kuberay_docs() if d["kind"] == "Deployment"]
    for pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"container {c['name']} mounts undefined volume {m['name']}"


def test_mlflow_server_deployment_and_service_fit_together():
    docs = _docs(KUBERAY / "mlflow-server.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["mlflow", "server"]
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]  # DB credentials never inline
    assert "MLFLOW_ARTIFACTS_DESTINATION" in env and "--serve-artifacts" in c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (sport,) = svc["spec"]["ports"]
    assert sport["targetPort"] in ports or sport["targetPort"] in ports.values()
    assert str(sport["port"]) == c["args"][c["args"].index("--port") + 1]
    # clients reach it by the Service name: MLflow's Host check must allow that name
    host = f"{svc['metadata']['name']}:{sport['port']}"
    import fnmatch
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert any(fnmatch.fnmatch(host, a) for a in allowed)
    assert any(fnmatch.fnmatch(f"{svc['metadata']['name']}.default.svc.cluster.local:5000", a) for a in allowed)
    # ... and everything that sets MLFLOW_TRACKING_URI points at that Service
    uri = f"http://{host}"
    for _, spec in _cluster_specs():
        for pod in _pod_specs(spec):
            for ct in pod["containers"]:
                for e in ct.get("env", []):
                    if e["name"] == "MLFLOW_TRACKING_URI":
                        assert e["value"] == uri
    assert _runtime_env()["env_vars"]["MLFLOW_TRACKING_URI"] == uri


def _job_script(command: str) -> tuple[str, list[str]]:
    """``python jobs/x.py --config configs/y.yaml k=v ...`` -> (script, argv after it)."""
    argv = shlex.split(command)
    assert argv[0] == "python", command
    return argv[1], argv[2:]


def _check_job_command(command: str) -> None:
    script, args = _job_script(command)
    assert re.fullmatch(r"jobs/[a-z_]+\.py", script), script
    if (REPO / "jobs").is_dir() and (REPO / script).exists():
        assert (REPO / script).is_file()
    else:  # written by another part of the project; at least the name must be the one the issue fixes
        assert script == "jobs/tune_steps.py", f"{script} does not exist"
    config = args[args.index("--config") + 1]
    assert (REPO / config).is_file(), f"{config} referenced by the job command does not exist"
    overrides = [a for a in args if "=" in a]
    if overrides:  # the overrides must give a valid config (field names and rules)
        from bidpm.config import load_config
        load_config(REPO / config, overrides)


def test_rayjob_runs_the_tune_job_and_ships_the_code():
    (job,) = [d for _, d in _ray_docs() if d["kind"] == "RayJob"]
    spec = job["spec"]
    _check_job_command(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    # nothing local exists inside the cluster: the code must come from remote archives
    assert re.match(r"(s3|gs|https)://.+\.zip$", env["working_dir"])
    assert all(re.match(r"(s3|gs|https)://.+\.zip$", m) for m in env["py_modules"])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == _runtime_env()["env_vars"]["MLFLOW_TRACKING_URI"]


# --- runtime env -----------------------------------------------------------------------------------
def _runtime_env() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


def test_runtime_env_ships_package_and_excludes_generated_files():
    env = _runtime_env()
    assert env["working_dir"] == "."
    for module in env["py_modules"]:
        assert (REPO / module / "__init__.py").is_file(), f"py_modules entry {module} is not a package"
    must = {".git", ".venv", "outputs", "mlruns"}
    assert must <= set(env["excludes"]), f"missing excludes: {must - set(env['excludes'])}"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray wants string env var values"
    assert set(env) <= {"working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "conda", "config"}


def test_runtime_env_is_accepted_by_ray():
    """Ray's own parser (the one `ray job submit --runtime-env` uses) accepts the file as written."""
    pytest.importorskip("ray")
    from ray.runtime_env import RuntimeEnv

    env = _runtime_env()
    parsed = RuntimeEnv(**env)
    assert parsed["py_modules"] == env["py_modules"] and parsed["env_vars"] == env["env_vars"]


def test_runtime_env_excludes_match_generated_paths():
    """The gitignore-style patterns really drop what a run leaves in the checkout (Ray's matcher)."""
    pytest.importorskip("ray")
    from ray._private.runtime_env.packaging import _get_excludes

    root = REPO
    match = _get_excludes(root, _runtime_env()["excludes"])
    for rel in ["outputs/quickstart/mlflow.db", ".git/HEAD", ".venv/bin/python", "mlruns/0/meta.yaml",
                "platform/bidpm/__pycache__/metrics.cpython-311.pyc"]:
        p = root / rel
        assert any(match(q) for q in [p, *p.parents] if q != root and root in q.parents), rel
    for rel in ["platform/bidpm/metrics/image.py", "jobs/tune_steps.py", "configs/quickstart.yaml"]:
        assert not any(match(q) for q in [root / rel, *(root / rel).parents] if root in q.parents), rel


# --- Ray cluster launcher YAMLs --------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_required_keys_and_autoscaling(name):
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in cfg, f"cluster/{name}: missing {key}"
    assert cfg["provider"]["type"] == name.removesuffix(".yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    assert gpu, f"cluster/{name}: no GPU worker node type"
    for k, v in workers.items():
        assert 0 <= v["min_workers"] <= v["max_workers"] <= cfg["max_workers"], k
    assert any(v["max_workers"] > v["min_workers"] for v in gpu.values()), "GPU workers cannot autoscale"
    assert any("pip install" in c for c in cfg["setup_commands"]), "setup_commands must install the project"
    assert f"ray=={RAY_VERSION_IN_MANIFESTS}" in " ".join(cfg["setup_commands"])
    assert RAY_VERSION_IN_MANIFESTS in cfg["docker"]["image"]
    assert {".git", ".venv", "outputs"} <= set(cfg["rsync_exclude"])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_validates_against_ray_schema(name):
    """Ray's cluster-config schema (ray/autoscaler/ray-schema.json, what `ray up` checks first)."""
    jsonschema = pytest.importorskip("jsonschema")
    ray = pytest.importorskip("ray")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cfg, schema)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_job_command_in_header_exists(name):
    """The `ray job submit ... -- python jobs/...` line each file documents refers to real files."""
    text = (CLUSTER / name).read_text()
    m = re.search(r"-- \\\n#\s+(python jobs/\S+ .*)$", text, re.M)
    assert m, f"cluster/{name}: no documented job command"
    _check_job_command(m.group(1))


def test_readme_covers_launch_submit_and_token_auth():
    text = (CLUSTER / "README.md").read_text()
    for needle in ("ray up cluster/aws.yaml", "ray up cluster/gcp.yaml", "kubectl apply -f cluster/kuberay/raycluster.yaml",
                   "cluster/kuberay/rayjob.yaml", "ray job submit", "--runtime-env cluster/runtime_env.yaml",
                   "~/.ray/auth_token", "RAY_AUTH_MODE=token", "cluster/Dockerfile"):
        assert needle in text, f"cluster/README.md does not mention {needle!r}"
