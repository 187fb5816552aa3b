"""Run an ASGI app like ``uvicorn APP --workers N``, minus two artefacts of the uvicorn CLI.

1. **Nagle.** ``uvicorn --workers N`` (N > 1) binds its listening socket as
   ``socket.socket(family=...)``, whose ``proto`` is 0. asyncio only sets ``TCP_NODELAY`` on
   accepted sockets whose ``proto`` is ``IPPROTO_TCP`` (``asyncio.base_events._set_nodelay``),
   so with the asyncio loop (no uvloop) every multi-worker connection has Nagle's algorithm on.
   uvicorn's h11 protocol writes a response's head and body in two sends, and the client's
   delayed ACK then stalls every response by ~40 ms: a floor app drops from thousands of
   calls/s to ~180 with 8 connections. (A single worker is not affected:
   ``loop.create_server(host, port)`` makes its socket through getaddrinfo, with ``proto=6``;
   uvloop sets TCP_NODELAY itself.)
2. **Balance.** All workers share one listening socket and asyncio accepts up to ``backlog``
   connections per wake-up, so the first worker to wake takes every connection of a burst: with
   wrk's keep-alive connections one worker serves everything and the others idle.

Here every listening socket is created with ``IPPROTO_TCP``, and with ``--balance reuseport``
(the default) each worker is an independent single-worker uvicorn ``Server`` on its own
``SO_REUSEPORT`` socket, so the kernel spreads connections over the workers (as gunicorn's
``--reuse-port`` does). ``--balance shared`` keeps uvicorn's ``Multiprocess`` supervisor and its
one shared socket (only the Nagle fix). ``bench/run.py --plain-uvicorn`` uses the uvicorn CLI.

``python bench/serve.py APP --port P [--workers N] [--app-dir DIR] [--loop L] [--http H]``
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn.supervisors import Multiprocess


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def supervise(args: argparse.Namespace) -> None:
    """N single-worker children on SO_REUSEPORT sockets; stop them all when one stops."""
    cmd = [sys.executable, os.path.abspath(__file__), args.app, "--host", args.host]
    cmd += ["--port", str(args.port), "--workers", "1", "--reuse-port", "--app-dir", args.app_dir]
    cmd += ["--log-level", args.log_level, "--loop", args.loop, "--http", args.http]
    children = [subprocess.Popen(cmd) for _ in range(args.workers)]

    def stop(*_: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--app-dir", default=".")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--loop", default="auto", help="uvicorn --loop (auto, asyncio, uvloop)")
    parser.add_argument("--http", default="auto", help="uvicorn --http (auto, h11, httptools)")
    parser.add_argument("--balance", choices=("reuseport", "shared"), default="reuseport")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # like uvicorn's --app-dir (default "."); spawned workers inherit sys.path
    sys.path.insert(0, os.path.abspath(args.app_dir))
    if args.workers > 1 and args.balance == "reuseport":
        supervise(args)
        return
    config = Config(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        loop=args.loop,
        http=args.http,
    )
    server = Server(config=config)
    if args.workers > 1:
        sock = listening_socket(args.host, args.port, reuse_port=False)
        Multiprocess(config, sockets=[sock]).run()
    elif args.reuse_port:
        sock = listening_socket(args.host, args.port, reuse_port=True)
        config.load_app()
        server.run(sockets=[sock])
    else:
        config.load_app()
        server.run()


if __name__ == "__main__":
    main()
