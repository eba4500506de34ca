"""Trees and candidates: what pipeline.yaml says to measure (a tree, the changes on it, the reference it
is compared with), read with the config reader so every error names its key and line."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.machines.spec import NAME_RE
from pipeline.util.yamlreader import Reader
from pipeline.workloads.flash import Workload, load_workload

CMDLINE_PARAM_RE = re.compile(r"^[A-Za-z0-9_.\-]+(=[A-Za-z0-9_.,:/\-]*)?$")
CHANGE_KINDS = ("patch", "revert", "config", "cmdline")



@dataclass(frozen=True)
class Tree:
    """A kernel tree to fetch: a git URL or path at a ref, or a Debian linux-source tarball."""

    name: str
    git: str | None = None
    ref: str | None = None
    tarball: Path | None = None
    # False for trees made from what a series brought (its base-commit, its own commits): builds of them
    # are untrusted however they are reached (see build.py, the trust boundary).
    trusted: bool = True


@dataclass(frozen=True)
class Change:
    """One change of a candidate: a patch or config fragment (with its file), a revert, or cmdline words."""

    kind: str  # one of CHANGE_KINDS
    value: str  # a path for patch/config, a commit for revert, parameters for cmdline
    path: Path | None = None  # resolved file for patch/config


@dataclass(frozen=True)
class Candidate:
    """A kernel to measure: a tree, its changes in order, its role and what it is compared with."""

    name: str
    tree: str
    changes: tuple[Change, ...] = ()
    description: str = ""
    workload: Workload | None = None  # None: the config's workload
    role: str = ""  # "control": a check of the method, with its prediction in the description
    compare_to: str = ""  # "": the baseline

    @property
    def cmdline(self) -> tuple[str, ...]:
        return tuple(p for c in self.changes if c.kind == "cmdline" for p in c.value.split())

    @property
    def source_changes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind in ("patch", "revert"))

    @property
    def config_fragments(self) -> tuple[Path, ...]:
        return tuple(c.path for c in self.changes if c.kind == "config" and c.path)


def load_trees(r: Reader, data: Any) -> dict[str, Tree]:
    """The `trees:` mapping, each tree checked (exactly one of git or tarball), errors with key and line."""
    data = r.mapping(data, "trees", tuple(data) if isinstance(data, dict) else ())
    if not data:
        raise r.error("trees", "at least one tree is needed")
    trees = {}
    for name, spec in data.items():
        path = f"trees.{name}"
        r.typed(name, path, str, lambda x: bool(NAME_RE.match(x)), "letters, digits, '.', '_', '-'")
        spec = r.mapping(spec, path, ("git", "ref", "tarball"))
        if ("git" in spec) == ("tarball" in spec):
            raise r.error(path, "give exactly one of 'git' (URL or path, with 'ref') or 'tarball'")
        if "tarball" in spec:
            text = r.typed(spec["tarball"], f"{path}.tarball", str)
            tarball = Path(os.path.expanduser(text))
            tarball = tarball if tarball.is_absolute() else (r.root / tarball)
            if not tarball.is_file():
                raise r.error(f"{path}.tarball", f"{text} does not exist; on Debian install it with "
                              f"'apt-get install {tarball.name.split('.tar')[0]}'")
            trees[name] = Tree(name, tarball=tarball.resolve())
        else:
            git = r.typed(spec["git"], f"{path}.git", str, lambda x: bool(x) and not x.startswith("-"),
                          "a git URL or a path (not an option)")
            ref = r.typed(spec.get("ref", "HEAD"), f"{path}.ref", str,
                          lambda x: not x.startswith("-") and ".." not in x, "not a valid ref")
            trees[name] = Tree(name, git=git, ref=ref)
    return trees


def load_candidates(r: Reader, data: Any, trees: dict[str, Tree],
                     workload: Workload) -> tuple[Candidate, ...]:
    """The `candidates:` list: names unique, trees known, every change checked, references known."""
    items = r.typed(data, "candidates", list, lambda x: len(x) > 0, "at least one candidate")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        path = f"candidates[{i}]"
        item = r.mapping(item, path, ("name", "tree", "changes", "description", "workload", "role",
                                      "compare_to"), ("name", "tree"))
        name = r.typed(item["name"], f"{path}.name", str, lambda x: bool(NAME_RE.match(x)),
                       "letters, digits, '.', '_', '-', at most 64")
        if name in seen:
            raise r.error(f"{path}.name", f"duplicate candidate name '{name}'")
        seen.add(name)
        tree = r.typed(item["tree"], f"{path}.tree", str)
        if tree not in trees:
            raise r.error(f"{path}.tree", f"'{tree}' names no tree; trees: {', '.join(trees)}")
        changes = []
        for j, ch in enumerate(r.typed(item.get("changes", []), f"{path}.changes", list)):
            cpath = f"{path}.changes[{j}]"
            ch = r.mapping(ch, cpath, CHANGE_KINDS)
            if len(ch) != 1:
                raise r.error(cpath, f"each change has exactly one of: {', '.join(CHANGE_KINDS)}")
            kind, value = next(iter(ch.items()))
            vpath = f"{cpath}.{kind}"
            if kind in ("patch", "config"):
                changes.append(Change(kind, r.typed(value, vpath, str), r.existing_file(value, vpath)))
            elif kind == "revert":
                sha_ok = lambda x: bool(re.fullmatch(r"[0-9a-fA-F]{7,40}", x))  # noqa: E731
                changes.append(Change(kind, r.typed(value, vpath, str, sha_ok, "a commit ID (7 to 40 hex digits)")))
            else:
                params = value if isinstance(value, list) else [value]
                for k, p in enumerate(params):
                    r.typed(p, f"{vpath}[{k}]" if isinstance(value, list) else vpath, str,
                            lambda x: all(CMDLINE_PARAM_RE.match(w) for w in x.split()) and x.isprintable(),
                            "kernel parameters are name or name=value, on one line")
                changes.append(Change(kind, " ".join(params)))
        own_workload = (load_workload(r, item["workload"], f"{path}.workload", workload)
                        if "workload" in item else None)
        role = r.typed(item.get("role", ""), f"{path}.role", str, lambda x: x in ("", "control"),
                       "'control' or nothing")
        compare_to = r.typed(item.get("compare_to", ""), f"{path}.compare_to", str)
        out.append(Candidate(name, tree, tuple(changes),
                             r.typed(item.get("description", ""), f"{path}.description", str),
                             own_workload, role, compare_to))
    names = [c.name for c in out]
    for i, c in enumerate(out):
        if c.compare_to and c.compare_to not in names:
            raise r.error(f"candidates[{i}].compare_to", f"'{c.compare_to}' names no candidate; candidates: "
                          f"{', '.join(names)}")
        if c.compare_to == c.name:
            raise r.error(f"candidates[{i}].compare_to", "a candidate cannot be compared with itself")
    return tuple(out)
