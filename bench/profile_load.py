"""The profile of ours under load: py-spy records a running ``get_todo`` load (``--gil`` and
without), summarised by ``bench/profsum.py``."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import profsum
from common import RESULTS, Server, log, run_checked
from load import run_wrk
from machine import tree_pids
from protocol import ERAS


def profile_ours(
    args: argparse.Namespace,
    wrk: str,
    py_spy: str,
    server: Server,
    token: str,
    result: dict[str, Any],
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    prof: dict[str, Any] = {
        "pid_tree": tree_pids(pid),
        "scenario": "get_todo",
        "era": args.profile_era,
        "connections": args.profile_connections,
        "workers": 1,
    }
    passes = [("gil", ["--gil"]), ("active", [])]
    if args.profile_svg:
        passes.append(("svg", ["--gil"]))
    for name, extra in passes:
        fmt = "flamegraph" if name == "svg" else "raw"
        out_path = RESULTS / ("profile-ours.svg" if name == "svg" else f"profile-ours-{name}.raw")
        wrk_proc = threading.Thread(
            target=lambda name=name: prof.setdefault("load", {}).__setitem__(
                name,
                run_wrk(
                    wrk,
                    server.url,
                    token,
                    "get_todo",
                    ERAS[args.profile_era],
                    connections=args.profile_connections,
                    threads=args.threads,
                    duration=args.profile_duration + 3,
                    check=True,
                ),
            ),
            daemon=True,
        )
        wrk_proc.start()
        time.sleep(1.0)
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(args.profile_duration),
            "--rate",
            "200",
            "--format",
            fmt,
            "--output",
            str(out_path),
            "--threads",
            *extra,
        ]
        try:
            run_checked(cmd, timeout=args.profile_duration + 60)
        except RuntimeError as exc:
            prof[f"{name}_error"] = str(exc)[-2000:]
            log(f"py-spy failed: {str(exc)[-500:]}")
        wrk_proc.join(timeout=args.profile_duration + 30)
        if fmt == "raw" and out_path.exists():
            stacks = profsum.parse(out_path.read_text().splitlines())
            prof[name] = profsum.summarise(stacks, top=30)
    text = []
    titles = {
        "gil": f"ours under get_todo load ({args.profile_era}, 1 worker) — py-spy --gil: "
        "samples holding the GIL (where the CPU goes)",
        "active": f"ours under get_todo load ({args.profile_era}, 1 worker) — py-spy without "
        "--gil: every non-idle thread (incl. waiting for the GIL)",
    }
    for name in ("gil", "active"):
        if name in prof:
            text.append(profsum.render(prof[name], titles[name]))
    if text:
        (RESULTS / "profile-ours.txt").write_text("\n\n".join(text))
    result["profile"] = prof
