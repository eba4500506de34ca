"""kconfig: the kernel's final .config read back and checked against the fragments that asked for it
(olddefconfig silently drops options whose dependencies are unmet), and when an in-place build may keep
the .config it has instead of making it again."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.stages.steps import BuildFailed
from pipeline.util.gitutil import git

_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$|^# (CONFIG_[A-Za-z0-9_]+) is not set$")

class ConfigOptionDropped(BuildFailed):
    """olddefconfig silently dropped options the fragments asked for."""

def config_differences(base_config: Path, config: Path) -> list[str]:
    """Options whose value differs between two final .config files, as 'CONFIG_X: old -> new'."""
    base = parse_config(base_config.read_text())
    other = parse_config(config.read_text())
    return [f"{k}: {base.get(k, 'n')} -> {other.get(k, 'n')}"
            for k in sorted(set(base) | set(other)) if base.get(k, "n") != other.get(k, "n")]

def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value ('n' for 'is not set')."""
    out = {}
    for line in text.splitlines():
        m = _OPTION_RE.match(line.strip())
        if m:
            if m.group(1):
                out[m.group(1)] = m.group(2)
            else:
                out[m.group(3)] = "n"
    return out

def _unmet_dependency(worktree: Path, option: str) -> str:
    """The `depends on` lines of an option's Kconfig entry, to explain why it was dropped."""
    sym = option.removeprefix("CONFIG_")
    res = git(["grep", "-n", "-A12", f"^config {sym}$", "--", "*Kconfig*"], worktree, check=False)
    deps = []
    for line in res.output.splitlines()[1:]:
        body = line.split("-", 2)[-1].strip() if "-" in line else line
        if body.startswith(("config ", "menuconfig ", "endmenu", "choice")):
            break
        if body.startswith("depends on"):
            deps.append(body)
    return "; ".join(deps) or "no 'depends on' found; it may be selected by another option or be a choice"

def check_config(worktree: Path, final: dict[str, str], fragments: tuple[Path, ...]) -> None:
    """Every option the fragments set must survive olddefconfig, as the last fragment to set it asked
    (fragments merge in order, as scripts/kconfig/merge_config.sh does: a later one overrides)."""
    wanted: dict[str, tuple[str, str]] = {}
    for frag in fragments:
        for opt, want in parse_config(frag.read_text()).items():
            wanted[opt] = (want, frag.name)
    dropped = []
    for opt, (want, name) in wanted.items():
        have = final.get(opt, "n")
        if have != want:
            dropped.append(f"{opt}={want} (got {have}) from {name}: {_unmet_dependency(worktree, opt)}")
    if dropped:
        raise ConfigOptionDropped("kernel config: options dropped by olddefconfig", "\n".join(dropped))


def configured_commit(slot: Path, store: Path, commit: str) -> str | None:
    """The commit the slot's trusted .config was made for, when making it again for `commit` would give
    the same file: no Kconfig file, config fragment, kconfig script or top Makefile differs between the
    two (the slot's key already fixes the base config and the fragments). None otherwise, or unknown.
    An untrusted build's private copy starts from the trusted build directory, so the same holds there."""
    try:
        made_for = (slot / "config.commit").read_text().strip()
    except OSError:
        return None
    if not re.fullmatch(r"[0-9a-f]{40}", made_for):
        return None
    res = git(["diff", "--name-only", "--no-renames", made_for, commit, "--"], store, check=False)
    if res.returncode != 0:
        return None
    if any(shapes_config(path) for path in res.output.splitlines()):
        return None
    return made_for


def shapes_config(path: str) -> bool:
    """Whether a changed file can change what the config steps make of the same base and fragments."""
    name = path.rsplit("/", 1)[-1]
    return (name.startswith("Kconfig") or name.endswith(".config") or name.endswith("_defconfig")
            or path.startswith("scripts/") or path == "Makefile")
