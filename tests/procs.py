"""Start-and-stop helpers for tests that run Ray heads and jobs as subprocesses (importable: tests/ is on sys.path).

Stopping: `ray stop` (and any kill by process name) would take down other Ray instances on the same
machine, including the suite's own ``ray_session``. A test therefore stops only what it started: the
processes whose command line names the temp dir it gave them, and their descendants, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

from ports import reserved_ports

BIN = Path(sys.executable).parent  # this venv's `ray`, `python`, `mlflow`
S3_BUCKET = "bidpm-test"          # the session's S3 bucket (conftest ``s3_env``)


def ray_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """This environment for Ray processes: the venv's ``ray``/``python`` first, no inherited RAY_ADDRESS or
    MLFLOW_TRACKING_URI, and the session's Ray auth mode (conftest fixes it; else token auth kept on when
    ``ray start`` will turn it on: a token file exists)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if "RAY_AUTH_MODE" not in env and ((Path.home() / ".ray" / "auth_token").exists() or env.get("RAY_AUTH_TOKEN")):
        env["RAY_AUTH_MODE"] = "token"
    env.update(extra or {})
    return env


def processes_naming(text: str) -> list[psutil.Process]:
    """Every process (not this one) whose command line contains ``text``, and their descendants."""
    own: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and text in " ".join(p.info["cmdline"] or []):
                own[p.pid] = p
                own.update({c.pid: c for c in p.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(own.values())


def stop_processes(procs: list[psutil.Process], term_timeout_s: float = 15) -> list[psutil.Process]:
    """SIGTERM, wait up to ``term_timeout_s``, then SIGKILL what is left; returns the survivors (normally none)."""
    for sig, wait in ((signal.SIGTERM, term_timeout_s), (signal.SIGKILL, 15)):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, procs = psutil.wait_procs(procs, timeout=wait)
        if not procs:
            break
    return procs


def stop_naming(text: str, term_timeout_s: float = 15) -> list[psutil.Process]:
    """Stop the processes naming ``text`` (a Ray head's own temp dir) and their descendants, by PID."""
    return stop_processes(processes_naming(text), term_timeout_s)


@contextmanager
def ray_head(prefix: str, *args: str, dashboard: bool = False, env: Optional[dict[str, str]] = None,
             stop_timeout_s: float = 15) -> Iterator[dict[str, str]]:
    """`ray start --head` on 127.0.0.1 with its own temp dir and ports; yields {"gcs": host:port, "dashboard": url}.

    Defaults would collide with other Ray instances (GCS 6379, agent 52365, client 10001, ...), and ports
    picked one at a time can repeat: every component that accepts 0 binds a free port itself; the ones
    that need a number are reserved together and released right before `ray start` (tests/ports.py).
    ``args``: more `ray start` flags (``--num-cpus=2``, ``--resources=...``). Stopped by PID on exit: SIGTERM,
    then SIGKILL after ``stop_timeout_s``. Also yields its ``temp_dir`` (whose name every process of it carries).
    """
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")     # short: Ray's unix sockets live under it
    auto = [f"--{flag}=0" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                                       "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
    with reserved_ports(3) as (gcs, client, dash):
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", *auto,
               f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
               *(["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"] if dashboard
                 else ["--include-dashboard=false"]), *args]
    try:                                # inside: a `ray start` that times out still gets its processes stopped
        out = subprocess.run(cmd, env=env or ray_env(), capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}" if dashboard else "", "temp_dir": temp_dir}
    finally:
        stop_naming(temp_dir, stop_timeout_s)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_placement_groups_removed(timeout_s: float = 120.0) -> None:
    """Wait until every placement group of the connected cluster is removed: a failed or killed run's
    workers are released asynchronously, and a person rerunning the command would wait for that too.
    On timeout the message lists each group left (id, state, bundles, name) and, from Ray's state API, the
    job and actor that created it and whether they are dead, so a leak names its owner."""
    from ray.util import placement_group_table

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = {k: v for k, v in placement_group_table().items() if v.get("state") != "REMOVED"}
        if not left:
            return
        time.sleep(0.5)
    raise AssertionError(f"placement groups of a finished run not removed within {timeout_s:.0f} s: "
                         f"{_describe_groups(left)}")


def _describe_groups(left: dict[str, dict]) -> str:
    """One line per placement group in ``left``: the table's fields plus its creator from the state API."""
    owners: dict[str, dict] = {}
    try:
        from ray.util.state import list_placement_groups

        for pg in list_placement_groups(detail=True, limit=1000, raise_on_missing_output=False):
            d = pg if isinstance(pg, dict) else pg.__dict__
            owners[d.get("placement_group_id", "")] = d
    except Exception as exc:  # noqa: BLE001 - a diagnostic; the table alone still names the group
        owners = {"": {"state_api_error": repr(exc)}}
    jobs: dict[str, str] = {}
    try:
        import ray

        jobs = {j["JobID"]: f"dead={j.get('IsDead')} driver_pid={j.get('DriverPid')} "
                            f"entrypoint={j.get('Entrypoint', '')[:80]!r}" for j in ray._private.state.jobs()}
    except Exception:  # noqa: BLE001
        pass
    lines = []
    for pid, pg in left.items():
        o = owners.get(pid, {})
        lines.append(f"{pid} state={pg.get('state')} name={pg.get('name')!r} bundles={pg.get('bundles')} "
                     f"creator_job={o.get('creator_job_id')} ({jobs.get(o.get('creator_job_id'), '?')}) "
                     f"creator_actor={o.get('creator_actor_id')} "
                     f"detached={o.get('is_detached')} stats={pg.get('stats')}")
    if "" in owners:
        lines.append(str(owners[""]))
    return "; ".join(lines)


def settled(read: Callable[[], Any], quiet_s: float = 2.0, timeout_s: float = 60.0) -> Any:
    """``read()`` once it has stopped changing for ``quiet_s``: what Ray Train's controller has registered
    for a run whose worker was just frozen (SIGSTOP). The controller fetched the worker's last report
    before the freeze or cannot fetch it at all; a registration it was writing at that moment lands
    within milliseconds; read at once, it could be missed and the test would expect the resume one epoch early."""
    last, since = read(), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last
    raise AssertionError(f"still changing after {timeout_s:.0f} s: {last!r}")


@contextmanager
def s3_server(log: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port; yields the environment that reaches it - credentials and
    endpoint only in the environment, as a cluster's nodes carry them. Stopped by PID."""
    import secrets
    import urllib.request

    with reserved_ports(1, host="127.0.0.1") as (port,):
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto server did not start (see {log})") from None
                time.sleep(0.3)
        yield {"AWS_ACCESS_KEY_ID": "bidpm-test", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
               "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        stop_processes([psutil.Process(proc.pid)], 5)


class MlflowServer:
    """`mlflow server` on loopback with its own SQLite store under ``store`` (or ``backend_uri``, given as the
    manifest gives it: MLFLOW_BACKEND_STORE_URI in the server's environment), started and stopped by PID (its
    own process group: the server and its workers). ``args``: more server flags (``--artifacts-destination``
    defaults to ``store/artifacts``; ``--app-name basic-auth`` ...); ``env``: its environment. The same port
    across ``start`` / ``kill`` / ``start`` (an outage and the server coming back), chosen once."""

    def __init__(self, store: Path, *args: str, env: Optional[dict[str, str]] = None, port: Optional[int] = None,
                 backend_uri: Optional[str] = None) -> None:
        self.store, self.args, self.env, self.backend_uri = Path(store), list(args), env, backend_uri
        if port is None:
            with reserved_ports(1, host="127.0.0.1") as (port,):
                pass
        self.port, self.proc = port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        import urllib.request

        self.store.mkdir(parents=True, exist_ok=True)
        dest = [] if "--artifacts-destination" in self.args else ["--artifacts-destination", str(self.store / "artifacts")]
        workers = [] if "--workers" in self.args else ["--workers", "1"]
        env = dict(self.env if self.env is not None else os.environ)
        if self.backend_uri:                 # as the KubeRay manifest passes it: in the environment, never argv
            env["MLFLOW_BACKEND_STORE_URI"] = self.backend_uri
            store = []
        else:
            store = ["--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}"]
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), *workers,
               *store, *dest, *self.args]
        log = open(self.store / "server.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"mlflow server did not start: {(self.store / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL, the whole process group (what an outage is)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def postgres_bin() -> Optional[Path]:
    """The folder holding PostgreSQL's ``initdb`` and ``postgres``: on PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (the package puts neither on PATH); None when not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


class PostgresServer:
    """A real PostgreSQL on a loopback port with its own data folder, started and stopped by PID.

    One database ``mlflow`` owned by user ``mlflow``, reached over TCP with a password (scram-sha-256,
    as a managed database is); the local socket (in the data folder) trusts, for set-up only. PostgreSQL
    refuses to run as root, so under root every command runs as the ``postgres`` system user
    (``runuser``) and the data folder is made in /tmp (pytest's tmp_path is private to root). ``stop``
    is an immediate shutdown (SIGQUIT to the postmaster, by the PID in its ``postmaster.pid``: what
    ``pg_ctl stop -m immediate`` sends, a crash for the clients); ``start`` again brings the same
    database back on the same port (crash recovery)."""

    def __init__(self, bindir: Path, password: str) -> None:
        self.bindir, self.password = Path(bindir), password
        self.data = Path(tempfile.mkdtemp(prefix="bidpm-pg-", dir="/tmp"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        with reserved_ports(1, host="127.0.0.1") as (port,):
            pass
        self.port = port
        self.uri = f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
        pw = self.data / "pw"
        pw.write_text(password + "\n")
        if self.as_user:
            import pwd

            ent = pwd.getpwnam("postgres")
            for p in (self.data, pw):
                os.chown(p, ent.pw_uid, ent.pw_gid)
        out = self._run("initdb", "-D", str(self.data / "db"), "-U", "mlflow", f"--pwfile={pw}", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        assert out.returncode == 0, out.stdout + out.stderr
        self.start()
        out = self._run("createdb", "-h", str(self.data), "-p", str(port), "-U", "mlflow", "mlflow")
        assert out.returncode == 0, out.stdout + out.stderr

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, str(self.bindir / tool), *args], capture_output=True, text=True, timeout=120)

    @property
    def log(self) -> Path:
        return self.data / "server.log"

    def start(self, timeout_s: float = 60) -> "PostgresServer":
        cmd = [*self.as_user, str(self.bindir / "pg_ctl"), "start", "-D", str(self.data / "db"), "-l", str(self.log),
               "-w", "-t", str(int(timeout_s)), "-o",
               f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off -c max_connections=40"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
        assert out.returncode == 0, out.stdout + out.stderr + (self.log.read_text()[-2000:] if self.log.exists() else "")
        return self

    def pid(self) -> Optional[int]:
        try:
            return int((self.data / "db" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout_s: float = 30) -> None:
        """Immediate shutdown by PID; returns once the postmaster is gone."""
        pid = self.pid()
        if pid is None or not psutil.pid_exists(pid):
            return
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            stop_processes([proc, *proc.children(recursive=True)], 5)

    def query(self, sql: str) -> list[tuple]:
        """Rows of ``sql`` over TCP with the password (the database must be up)."""
        import psycopg

        con = psycopg.connect(self.uri, connect_timeout=10)
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            con.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def manifest_server(folder: Path, backend_uri: Optional[str] = None, args_kept: bool = False) -> tuple[MlflowServer, dict[str, str]]:
    """An `MlflowServer` configured as cluster/kuberay/mlflow-server.yaml configures its pod: the
    Deployment's args (``--serve-artifacts --app-name basic-auth``; ``--workers`` too with ``args_kept``),
    the ConfigMap's ``basic_auth.ini`` (its user store moved to ``folder``) and the Secrets' values in the
    environment (made up here: admin ``bidpm``). ``backend_uri``: the manifest's MLFLOW_BACKEND_STORE_URI
    (a PostgreSQL URI); else the helper's SQLite store. Returns the (not started) server and the Secret
    values, plus the ConfigMap's ``create_run_user.py`` source as ``secret["create_run_user.py"]``."""
    import configparser

    import flask_wtf  # MLflow's basic-auth app needs it (mlflow[auth]); a test dependency
    import yaml

    repo = Path(__file__).resolve().parents[1]
    docs = {d["kind"]: d for d in yaml.safe_load_all((repo / "cluster/kuberay/mlflow-server.yaml").read_text()) if d}
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    ini = configparser.ConfigParser()
    ini.read_string(docs["ConfigMap"]["data"]["basic_auth.ini"])
    ini["mlflow"]["database_uri"] = f"sqlite:///{folder / 'basic_auth.db'}"     # the pod's own volume, here folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "basic_auth.ini", "w") as f:
        ini.write(f)
    secret = {"username": "bidpm", "password": "pw-" + os.urandom(8).hex(), "flask-secret-key": os.urandom(16).hex()}
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
           "PYTHONPATH": os.pathsep.join([str(Path(flask_wtf.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    for e in c["env"]:
        if "valueFrom" in e and e["name"] != "MLFLOW_BACKEND_STORE_URI":
            env[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
    args, skip = [], {"--host", "--port"} | (set() if args_kept else {"--workers"})   # loopback and a free port: MlflowServer's
    for i, a in enumerate(c["args"]):
        if a not in skip and (i == 0 or c["args"][i - 1] not in skip):
            args.append(a)
    secret["create_run_user.py"] = docs["ConfigMap"]["data"]["create_run_user.py"]
    return MlflowServer(folder, *args, env=env, backend_uri=backend_uri), secret
