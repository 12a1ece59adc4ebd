"""A throw-away PostgreSQL server on loopback for the store tests (and `.ci/run`).

`SELFREWARD_TEST_PG_URL` wins when set (a server someone else runs). Otherwise the session starts
its own: `initdb -A trust` into a fresh temp dir, then `pg_ctl start` listening on 127.0.0.1 and
a socket in that dir. `initdb` refuses to run as root, so as root both run as the `postgres`
user (`runuser`) on a dir that user owns. Each test gets a fresh database (`pg_url`), dropped
afterwards. Tests skip, saying why, only when no server binary exists.

Also a command line, stdlib only, so CI can start one before the venv exists:
`python3 tests/pgserver.py start DIR` prints the URL; `python3 tests/pgserver.py stop DIR`;
`python3 tests/pgserver.py check` fails when no server binary is found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV_URL = "SELFREWARD_TEST_PG_URL"
SKIP_REASON = (
    "no PostgreSQL server binary found (looked in `pg_config --bindir` and "
    "/usr/lib/postgresql/*/bin): `apt-get install postgresql`, or set SELFREWARD_TEST_PG_URL"
)


def find_bindir() -> Path | None:
    """The folder holding `initdb`, `pg_ctl` and `postgres`, or None."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _as_owner(cmd: list[str]) -> list[str]:
    """Root cannot run initdb/pg_ctl: run them as `postgres` then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path, bindir: Path) -> str:
    """initdb + start a server under `root` (created); returns its superuser URL."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(
        _as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user,
                   "--no-sync", "-E", "UTF8"]),
        **run,
    )  # fmt: skip
    opts = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=on"
    (root / "opts").write_text(opts)
    ctl(root, bindir, "start")
    (root / "url").write_text(f"postgresql://{user}@127.0.0.1:{port}/postgres")
    return (root / "url").read_text()


def ctl(root: Path, bindir: Path, action: str, mode: str = "fast") -> None:
    """`pg_ctl start|stop|restart` on the server under `root` (as `start` made it); waits
    until it is done. Tests of store outages stop and start their own server with it."""
    cmd = [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w",
           "-t", "60", "-m", mode, "-o", (root / "opts").read_text(), action]  # fmt: skip
    subprocess.run(_as_owner(cmd), check=True, capture_output=True, text=True, timeout=120)


def stop(root: Path, bindir: Path) -> None:
    """Stop the server under `root` (fast shutdown) and remove the dir."""
    if (root / "data").is_dir():
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w",
                       "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def server_url() -> Iterator[str]:
    """The session's server: the env's, or one started (and stopped) here."""
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    import pytest

    bindir = find_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    root = Path(tempfile.mkdtemp(prefix="selfreward-pg-"))
    try:
        yield start(root, bindir)
    finally:
        stop(root, bindir)


def fresh_database(server: str) -> Iterator[str]:
    """A new empty database on `server` (its URL), dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    action = sys.argv[1]
    found = find_bindir()
    if found is None:
        sys.exit(SKIP_REASON)
    if action == "check":  # exit status 0: server binaries present (.ci/run installs them else)
        print(found)
    elif action == "start":
        print(start(Path(sys.argv[2]), found))
    else:
        stop(Path(sys.argv[2]), found)
