"""publish: what a published report may say about the machine that ran it.

A run folder keeps every local path (caches, checkouts, homes): it is the machine's own record. What goes
into reports/ (results.json, metadata.json, the pages) is for others, so every absolute path in it is
rewritten: the home and the run's caches to a label, any other path outside /usr to its last part.
Debian's own paths (/usr/src/linux-source-6.1.tar.xz) are what every reader has and stay as they are.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_ABS = re.compile(r"(?<![\w./>~-])(/(?:[\w.@+-]+/)*[\w.@+-]*)")
KEEP_UNDER = ("/usr/", "/etc/", "/dev/", "/proc/", "/sys/", "/tmp/kpipe/")  # shared by every Debian machine


def labels(run_dir: Path) -> list[tuple[str, str]]:
    """(local prefix, label) pairs, longest first: the cache, the run folder and its parent, this checkout, home."""
    out = []
    cache = os.environ.get("KPIPE_CACHE_DIR")
    if cache:
        out.append((str(Path(cache).resolve()), "<cache>"))
    out.append((str(run_dir.resolve()), "<run>"))
    out.append((str(Path(__file__).resolve().parents[2]), "<kpipe>"))  # this checkout: its pipeline.yaml, patches
    out.append((str(run_dir.resolve().parent), "<runs>"))
    home = str(Path.home())
    if home not in ("/", ""):
        out.append((home, "~"))
    return sorted(out, key=lambda kv: -len(kv[0]))


def local_path(text: str, labels: list[tuple[str, str]]) -> str:
    """`text` with every absolute local path in it rewritten for publication."""
    def one(m: re.Match) -> str:
        path = m.group(1)
        if path == "/" or path.startswith(KEEP_UNDER):
            return path
        for prefix, label in labels:
            if path == prefix or path.startswith(prefix + "/"):
                return label + path[len(prefix):]
        return "<local>/" + path.rstrip("/").rsplit("/", 1)[-1]
    return _ABS.sub(one, text)


def publishable(data: Any, run_dir: Path) -> Any:
    """A copy of a results or metadata document with no absolute local path left in any string."""
    labels_ = labels(run_dir)

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return local_path(x, labels_) if "/" in x else x
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {(walk(k) if isinstance(k, str) else k): walk(v) for k, v in x.items()}
        return x

    return walk(data)


def copy_logs(run_dir: Path, out_dir: Path) -> None:
    """Copy the run's logs next to the report: regular files only (a symlink in a run folder is never
    followed, so nothing outside it can be published), nothing deleted, existing files overwritten."""
    src = run_dir / "logs"
    if not src.is_dir() or src.is_symlink():
        return
    path_labels = labels(run_dir)
    for path in sorted(src.rglob("*")):
        if any(p.is_symlink() for p in (path, *path.relative_to(src).parents) if p != Path(".")) \
                or not path.is_file():
            continue
        dest = out_dir / "logs" / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Published, so this machine's paths become labels (the run folder keeps them as they were).
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        dest.write_bytes(local_path(text, path_labels).encode("utf-8", errors="surrogateescape"))
