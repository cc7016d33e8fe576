"""Security properties checked without Ray or a server: what the code may call (static scan of
platform/), where the pseudonym salt and raw subject ids may go (configs, pickles, checkpoints), and
what the cluster files expose (dashboard binding, MLflow auth + NetworkPolicy, no secrets in YAML).

The registry side (a tampered python_model.pkl, the salt in MLflow params and registered models) is
tests/integration/test_registry_faults.py; shards and manifests are tests/integration/test_ingest_privacy.py.
"""

from __future__ import annotations

import ast
import configparser
import json
import pickle
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from bidpm.config import ConfigError, config_from_dict, load_config
from bidpm.config.data import SALT_ENV, salt_fingerprint
from bidpm.data.manifest import config_digest

REPO = Path(__file__).resolve().parents[2]
PLATFORM = REPO / "platform"
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"

SALT = "s3cr3t-salt-7f1e9c2ab4d0"          # a known salt string: must appear in no dump
RAW_ID = "BraTS2021_00042"                  # a raw subject id in an explicit list


@pytest.fixture(autouse=True)
def _no_salt_env(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)


def _secret_cfg(*extra: str):
    return load_config(None, ["output_dir=/nonexistent/bidpm-security", f"data.pseudonym_salt={SALT}",
                              f"data.split.test_subjects=[{RAW_ID}]", *extra])


# --- static scan of the package ------------------------------------------------------------------
def _calls(path: Path) -> Iterator[tuple[ast.Call, str]]:
    """Every call in ``path`` with its dotted callee name (``torch.load``, ``subprocess.run``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            yield node, ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> Any:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else k.value
    return None


def scan(root: Path) -> tuple[list[str], dict[str, int]]:
    """(violations, counts of the calls that must exist) over every .py file under ``root``."""
    bad: list[str] = []
    seen = {"torch.load": 0, "yaml.safe_load": 0}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        for call, name in _calls(path):
            where = f"{rel}:{call.lineno} {name}"
            if name in seen:
                seen[name] += 1
            if re.fullmatch(r"(c?pickle|cloudpickle|dill|joblib|_pickle)\.loads?|(pickle\.)?Unpickler", name):
                bad.append(f"{where}: unpickling runs code from the file")
            if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
                bad.append(f"{where}: use yaml.safe_load")
            if name == "torch.load" and _kw(call, "weights_only") is not True:
                bad.append(f"{where}: torch.load needs weights_only=True")
            if _kw(call, "shell") is True:
                bad.append(f"{where}: shell=True")
            builtin_eval = isinstance(call.func, ast.Name) and name in ("eval", "exec")   # not model.eval()
            if builtin_eval or name in ("os.system", "os.popen") or name.startswith(("os.exec", "os.spawn")):
                bad.append(f"{where}: runs a shell / arbitrary code")
            if name.startswith("subprocess.") and call.args and isinstance(call.args[0], (ast.Constant, ast.JoinedStr)):
                bad.append(f"{where}: a command string (pass an argument list)")
    return bad, seen


def test_package_never_unpickles_shells_or_loads_yaml_unsafely():
    bad, seen = scan(PLATFORM / "bidpm")
    assert not bad, "unsafe calls in platform/:\n" + "\n".join(bad)
    assert seen["torch.load"] >= 1 and seen["yaml.safe_load"] >= 1, seen   # the scan sees the real call sites


def test_scanner_catches_each_unsafe_pattern(tmp_path):
    """The scan bites: one file with every forbidden call, each reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import pickle, subprocess, torch, yaml, os\n"
        "pickle.load(open('f', 'rb'))\n"
        "pickle.loads(b'')\n"
        "yaml.load('a: 1')\n"
        "torch.load('state.pt')\n"
        "torch.load('state.pt', weights_only=False)\n"
        "subprocess.run(['ls'], shell=True)\n"
        "subprocess.run('ls -l')\n"
        "os.system('ls')\n"
        "net.eval()\n"
        "build().eval()\n"
        "torch.load('ok.pt', weights_only=True)\n"
        "yaml.safe_load('a: 1')\n")
    bad, seen = scan(pkg)
    assert len(bad) == 8, bad
    assert seen == {"torch.load": 3, "yaml.safe_load": 1}


# --- the pseudonym salt and raw subject ids --------------------------------------------------------
def test_salt_and_subject_lists_stay_out_of_every_dump():
    cfg = _secret_cfg()
    assert cfg.data.pseudonym_salt == SALT and cfg.data.split.test_subjects == [RAW_ID]   # kept for the ingest
    for text in (cfg.to_yaml(), str(cfg.to_dict()), str(cfg.flat()), repr(cfg), str(cfg.model_dump()),
                 cfg.model_dump_json()):
        assert SALT not in text and RAW_ID not in text
    assert cfg.data.salt_digest == salt_fingerprint(SALT) and cfg.data.split.subjects_digest
    # pickles (Ray object store, Tune state) drop them too; an in-process copy keeps them
    for blob in (pickle.dumps(cfg), pickle.dumps(cfg.data)):
        assert SALT.encode() not in blob and RAW_ID.encode() not in blob
    copy = cfg.model_copy(deep=True)
    assert copy.data.pseudonym_salt == SALT and copy.data.split.test_subjects == [RAW_ID]


def test_rebuilt_config_finds_the_same_shards_but_cannot_ingest():
    """A trial / worker config rebuilt from the dump (or from a pickle) names the same shard folder
    (digests only) and refuses a fresh ingest with the fix, instead of pseudonymising with another salt."""
    cfg = _secret_cfg()
    rebuilt = (config_from_dict(cfg.to_dict()), config_from_dict(yaml.safe_load(cfg.to_yaml())), pickle.loads(pickle.dumps(cfg)))
    for again in rebuilt:
        assert again.data.pseudonym_salt is None and again.data.split.test_subjects is None
        assert config_digest(again) == config_digest(cfg)
        with pytest.raises(ConfigError, match=SALT_ENV):
            again.data.ingest_secrets()
    assert cfg.data.ingest_secrets() == SALT
    # another salt or other lists: another shard folder
    assert config_digest(_secret_cfg("data.pseudonym_salt=other")) != config_digest(cfg)
    assert config_digest(_secret_cfg("data.split.test_subjects=[BraTS2021_00043]")) != config_digest(cfg)


def test_salt_from_the_environment(monkeypatch):
    monkeypatch.setenv(SALT_ENV, SALT)
    cfg = load_config(None, ["output_dir=/nonexistent/bidpm-security"])
    assert cfg.data.pseudonym_salt is None and cfg.data.salt_digest == salt_fingerprint(SALT)
    assert cfg.data.ingest_secrets() == SALT and SALT not in cfg.to_yaml()
    assert config_digest(cfg) == config_digest(_secret_cfg("data.split.test_subjects=null"))
    rebuilt = config_from_dict(cfg.to_dict())       # a worker with the variable: the digest it carries wins
    monkeypatch.setenv(SALT_ENV, "a-different-salt")
    assert config_from_dict(cfg.to_dict()).data.salt_digest == rebuilt.data.salt_digest
    assert config_from_dict(cfg.to_dict()).data.known_salt() is None


def test_real_layouts_refuse_the_default_or_a_short_salt(tmp_path, monkeypatch):
    """Issue 22 item 6: real data is never pseudonymised with the public default (or under 128 bits);
    phantoms keep the fixed default. The error says how to make and pass a salt."""
    real = ["output_dir=/nonexistent/bidpm-security", "data.layout=brats", "data.root=/nonexistent/brats"]
    with pytest.raises(ConfigError, match=r"data.layout=brats is real data and no salt is set.*openssl rand -hex 32"):
        load_config(None, real).data.ingest_secrets()
    with pytest.raises(ConfigError, match=r"the salt has 24 characters, under 32"):
        load_config(None, [*real, f"data.pseudonym_salt={SALT}"]).data.ingest_secrets()
    strong = "9f" * 16
    assert load_config(None, [*real, f"data.pseudonym_salt={strong}"]).data.ingest_secrets() == strong
    assert load_config(None, [*real, "data.pseudonymise=false"]).data.ingest_secrets() == "bidpm"  # no pseudonyms made
    assert load_config(None, ["output_dir=/nonexistent/bidpm-security"]).data.ingest_secrets() == "bidpm"  # phantoms


def test_salt_from_a_file_never_enters_a_dump(tmp_path):
    strong = "a1" * 20
    salt_file = tmp_path / "salt.txt"
    salt_file.write_text(strong + "\n")
    cfg = load_config(None, ["output_dir=/nonexistent/bidpm-security", "data.layout=brats", "data.root=/x",
                             f"data.pseudonym_salt_file={salt_file}"])
    assert cfg.data.salt_digest == salt_fingerprint(strong) and cfg.data.ingest_secrets() == strong
    assert strong not in cfg.to_yaml() and strong.encode() not in pickle.dumps(cfg)
    again = config_from_dict(cfg.to_dict())     # a worker that can read the file knows the salt again
    assert again.data.known_salt() == strong
    # same salt by file or by environment: the same shard folder
    assert config_digest(cfg) == config_digest(load_config(None, ["output_dir=/nonexistent/bidpm-security", "data.layout=brats",
                                                                  "data.root=/x", f"data.pseudonym_salt={strong}"]))
    with pytest.raises(ConfigError, match=r"data.pseudonym_salt_file: cannot read .*missing.txt"):
        load_config(None, [f"data.pseudonym_salt_file={tmp_path / 'missing.txt'}"])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match=r"data.pseudonym_salt_file: .*empty.txt is empty"):
        load_config(None, [f"data.pseudonym_salt_file={tmp_path / 'empty.txt'}"])


def test_default_salt_configs_still_ingest_after_a_round_trip():
    cfg = load_config(None, ["output_dir=/nonexistent/bidpm-security"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.data.ingest_secrets() == "bidpm"


def test_shard_folder_digests_are_unchanged_for_existing_shards():
    """Shards prepared before the salt left the dumps keep their folder (digests computed with the
    previous code, commit 035d1af, for these exact configs). If a new data setting changes them on
    purpose, update the numbers: every user then re-prepares once."""
    base = ["output_dir=/nonexistent/bidpm-digest"]
    assert config_digest(load_config(None, base)) == "b85e7ca04465c4dc"
    assert config_digest(load_config(None, base + ["data.pseudonym_salt=0123456789abcdef-secret", "data.layout=brats",
                                                   "data.root=/data/BraTS"])) == "fb494f90ed45640a"


def test_checkpoint_files_hold_neither_salt_nor_raw_ids(tmp_path):
    import torch

    from bidpm.model import EMA, build_velocity_field
    from bidpm.train.checkpoint import load_checkpoint_model, save_checkpoint

    cfg = _secret_cfg("model.base_channels=8", "model.groups=4", "model.channel_mults=[1,2]", "data.image_size=[16,16]")
    model = build_velocity_field(cfg.model, (16, 16))
    ck = save_checkpoint(tmp_path / "ck", model=model, ema=EMA(model, 0.9), optimizer=torch.optim.Adam(model.parameters()),
                         step=1, epoch=1, cfg=cfg, manifest_digest="d")
    for f in ck.iterdir():
        data = f.read_bytes()
        assert SALT.encode() not in data and RAW_ID.encode() not in data, f.name
    _, _, loaded = load_checkpoint_model(ck)
    assert config_digest(loaded) == config_digest(cfg) and loaded.data.pseudonym_salt is None


def test_no_config_sets_a_salt_or_subject_lists():
    """Secrets never in YAML: the shipped configs leave the salt to the environment."""
    for path in sorted((REPO / "configs").glob("*.yaml")):
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        assert "pseudonym_salt" not in data, path.name
        assert not {"train_subjects", "val_subjects", "test_subjects"} & set(data.get("split") or {}), path.name


# --- cluster files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_dashboard_listens_on_loopback_only(name):
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    assert hosts and all(h in ("127.0.0.1", "localhost") for h in hosts), hosts
    every = " ".join(str(c) for k, v in cfg.items() if k.endswith("_commands") for c in (v or []))
    assert "0.0.0.0" not in every, f"cluster/{name}: something listens on every interface"
    assert f"ray dashboard cluster/{name}" in (CLUSTER / name).read_text()   # how users reach it instead


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


def _pod_templates() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(what, KubeRay node type, pod template) of every Ray pod: RayCluster and RayJob head + worker groups."""
    for path, doc in _all_docs():
        if doc.get("kind") not in ("RayCluster", "RayJob"):
            continue
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        yield f"{path.name} head", "head", spec["headGroupSpec"]["template"]
        for g in spec.get("workerGroupSpecs", []):
            yield f"{path.name} {g['groupName']}", "worker", g["template"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions)."""
    if not set(selector) <= {"matchLabels", "matchExpressions"}:
        raise AssertionError(f"unknown label-selector fields {sorted(set(selector) - {'matchLabels', 'matchExpressions'})}")
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


# The NetworkPolicy fields of networking.k8s.io/v1 (Kubernetes API reference); a typo would be dropped.
_NP_SPEC = {"podSelector", "policyTypes", "ingress", "egress"}
_NP_RULE = {"from", "ports"}
_NP_PEER = {"podSelector", "namespaceSelector", "ipBlock"}
_NP_PORT = {"protocol", "port", "endPort"}


def _mlflow_docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in _docs(KUBERAY / "mlflow-server.yaml")}


def test_mlflow_network_policy_admits_only_the_ray_pods():
    docs = _mlflow_docs()
    np_, dep = docs["NetworkPolicy"], docs["Deployment"]
    assert np_["apiVersion"] == "networking.k8s.io/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", np_["metadata"]["name"])
    spec = np_["spec"]
    assert set(spec) <= _NP_SPEC and set(spec["policyTypes"]) <= {"Ingress", "Egress"} and "Ingress" in spec["policyTypes"]
    server_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _selects(spec["podSelector"], server_labels), "the policy does not select the MLflow pod"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    peers = []
    for rule in spec["ingress"]:
        assert set(rule) <= _NP_RULE and rule.get("from"), "an ingress rule without `from` admits everyone"
        for peer in rule["from"]:
            assert set(peer) <= _NP_PEER and set(peer) == {"podSelector"}, peer   # pods of this namespace only
            peers.append(peer["podSelector"])
        for p in rule["ports"]:
            assert set(p) <= _NP_PORT and p.get("protocol", "TCP") == "TCP"
            assert p["port"] in container_ports.values() or p["port"] in container_ports
    # every Ray pod (labels as KubeRay sets them on its pods) is admitted ...
    templates = list(_pod_templates())
    assert len(templates) >= 4
    for what, node_type, tpl in templates:
        labels = {**(tpl.get("metadata") or {}).get("labels", {}), "ray.io/node-type": node_type, "ray.io/cluster": "x"}
        assert any(_selects(s, labels) for s in peers), f"{what}: not admitted by the MLflow NetworkPolicy"
    # ... and nothing else: not the MLflow pod's own labels, not an arbitrary pod, not another team's Ray pod
    for labels in (server_labels, {"app": "debug-shell"}, {"app.kubernetes.io/part-of": "bidpm"},
                   {"ray.io/node-type": "worker", "ray.io/cluster": "someone-else"}):
        assert not any(_selects(s, labels) for s in peers), labels


def test_mlflow_server_requires_authentication_with_credentials_from_secrets():
    docs = _mlflow_docs()
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    env = {e["name"]: e for e in c["env"]}
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    # the auth config is the mounted ConfigMap, with no credentials, its user store on the server's own volume
    path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm_volume = volumes[mounts[str(Path(path).parent)]]
    assert cm_volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    ini = configparser.ConfigParser()
    ini.read_string(docs["ConfigMap"]["data"][Path(path).name])
    auth = ini["mlflow"]
    assert "admin_password" not in auth and "admin_username" not in auth
    assert auth["default_permission"] in ("NO_PERMISSIONS", "READ")
    db = auth["database_uri"].removeprefix("sqlite:///")
    (db_mount,) = [m for m in mounts if db.startswith(m.rstrip("/") + "/")]
    db_volume = volumes[mounts[db_mount]]
    assert db_volume["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert not db_mount.startswith("/mnt/bidpm"), "the user store must not sit on the volume the Ray pods write"


def test_ray_pods_get_mlflow_credentials_from_the_secret():
    """Issue 22 item 10: the Ray pods log as the non-admin run user the server's pod creates; never as the admin."""
    pod = _mlflow_docs()["Deployment"]["spec"]["template"]["spec"]
    admin = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"]
             if e["name"].startswith("MLFLOW_AUTH_ADMIN")}
    run_user = {e["valueFrom"]["secretKeyRef"]["name"] for c in pod.get("initContainers", [])
                for e in c.get("env", []) if e["name"].startswith("BIDPM_MLFLOW_RUN_")}
    assert admin and run_user and not admin & run_user
    for what, _, tpl in _pod_templates():
        for c in tpl["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] in run_user, f"{what}: {name}"


def _env_entries(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield node
        for v in node.values():
            yield from _env_entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _env_entries(v)


_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY", re.IGNORECASE)


def test_no_secrets_in_cluster_yaml_and_services_stay_internal():
    files = sorted(KUBERAY.glob("*.yaml")) + [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml", CLUSTER / "runtime_env.yaml"]
    for path in files:
        for doc in _docs(path):
            assert doc.get("kind") != "Secret", f"{path.name}: a Secret with its values in the repository"
            for e in _env_entries(doc):
                if _SECRET_NAME.search(str(e["name"])):
                    assert "value" not in e, f"{path.name}: {e['name']} set inline; use valueFrom.secretKeyRef"
            for k in ((doc.get("env_vars") or {}) if path.name == "runtime_env.yaml" else ()):
                assert not _SECRET_NAME.search(k), f"runtime_env.yaml ships {k} to every job (visible in the dashboard)"
            text = yaml.safe_dump(doc)
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path.name}: credentials in a URI"
            if doc.get("kind") == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{path.name}: {doc['metadata']['name']}"
            if doc.get("kind") in ("RayCluster", "RayJob"):
                spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
                assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
                assert spec["authOptions"]["mode"] == "token"


def test_cluster_readme_says_how_clients_pass_mlflow_credentials():
    text = (CLUSTER / "README.md").read_text()
    for needle in ("--app-name basic-auth", "bidpm-mlflow-auth", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                   "NetworkPolicy", "secretKeyRef", "--dashboard-host=127.0.0.1", SALT_ENV):
        assert needle in text, f"cluster/README.md does not mention {needle!r}"


def test_secrets_given_on_the_command_line_are_echoed_nowhere(monkeypatch):
    """A wrong value next to a salt, a salt that is not valid YAML, a credential-bearing tracking URI: the
    errors name the field and the fix, never the secret; the rerun command a stopped job prints drops it."""
    from bidpm.cli import rerun_command
    from bidpm.config import ConfigError, load_config

    salt, pw = "s3cr3t-salt-on-the-command-line", "pw-9f3e1c"
    for overrides in ([f"data.pseudonym_salt={salt}", "train.epochs=0"],          # an error elsewhere, salt in the origin
                      [f"data.pseudonym_salt=[{salt}"],                          # the salt itself is not valid YAML
                      [f"data.pseudonym_salt={{a: {salt}}}"]):                  # wrong type: pydantic's "(got ...)"
        with pytest.raises(ConfigError) as e:
            load_config(None, overrides)
        assert salt not in str(e.value) and "data.pseudonym_salt" in str(e.value) or "train.epochs" in str(e.value), str(e.value)
        assert salt not in str(e.value)
    for uri in (f"postgresql://bidpm:{pw}@db:5432/mlflow", f"https://bidpm:{pw}@mlflow.example.org"):
        with pytest.raises(ConfigError, match="credentials in the tracking URI") as e:
            load_config(None, [f"tracking.tracking_uri={uri}"])
        assert pw not in str(e.value)
    assert load_config(None, ["tracking.tracking_uri=postgresql://db:5432/mlflow"]).mlflow_uri == "postgresql://db:5432/mlflow"
    cmd = rerun_command(["jobs/study.py", "--config", "c.yaml", f"data.pseudonym_salt={salt}", "train.epochs=3",
                         f"tracking.tracking_uri=https://u:{pw}@h"])
    assert salt not in cmd and pw not in cmd and "train.epochs=3" in cmd and "data.pseudonym_salt=<redacted>" in cmd


def test_a_skipped_subjects_problem_text_and_path_stay_out_of_the_manifest():
    """Issue 22 item 7: readers' messages quote the full path; a pseudonymised manifest keeps the
    category, the role and the pseudonym only (the console report has the text)."""
    from bidpm.data.manifest import build_manifest
    from bidpm.data.skipped import skipped_report

    path = "/data/Smith_John/Smith_John_t1.nii.gz"
    bad = [{"pseudonym": "sub-0123456789abcdef", "kind": "unreadable", "role": "source", "location": path, "split": "train",
            "problem": f"cannot be read (IOError: Failed to open local file '{path}'. Detail: [errno 13] Permission denied)"}]
    cfg = load_config(None, ["output_dir=/nonexistent/bidpm-security"])
    text = json.dumps(build_manifest(cfg, "v", [], {}, [], bad))
    assert "Smith_John" not in text and "Permission denied" not in text
    assert '"kind": "unreadable"' in text and "sub-0123456789abcdef" in text
    # not pseudonymised (ids are not secret there): the text and the location are kept
    plain = build_manifest(load_config(None, ["output_dir=/nonexistent/bidpm-security", "data.pseudonymise=false"]), "v", [], {}, [], bad)
    assert plain["skipped"][0]["problem"] == bad[0]["problem"] and plain["skipped"][0]["location"] == path
    line = skipped_report(load_config(None, ["output_dir=/nonexistent/bidpm-security", "data.pseudonymise=false"]), plain)[0]
    assert "Permission denied" in line and "[unreadable]" in line
