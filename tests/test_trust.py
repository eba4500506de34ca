"""The trust boundary of builds (build.py, sandbox.py, safefs.py), on a tiny tree whose Makefile is the
hostile part: real bubblewrap, real ccache, real make, as the pipeline runs them; each build takes a second.

The rows are those of reviews/2026-12-hostile-input.md #1-#6: what an untrusted build leaves behind is
never executed, followed or read as configuration by root afterwards, nor by another candidate's build.
"""
from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import git

from pipeline.candidates import Candidate, Change, Tree
from pipeline.config import KernelConfig
from pipeline.stages.build import build_kernel
from pipeline.stages.fetch import fetch_tree
from pipeline.stages.patch import apply_changes
from pipeline.stages.sandbox import self_check
from pipeline.stages.slots import slot_path
from pipeline.stages.steps import BuildFailed
from pipeline.util.safefs import UnsafeArtifact, copy_regular

needs_tools = pytest.mark.skipif(not shutil.which("bwrap") or not shutil.which("ccache"),
                                 reason="needs bubblewrap and ccache (./setup.sh)")
pytestmark = needs_tools

MAKEFILE = textwrap.dedent("""\
    # A kernel tree in miniature: the targets and outputs the pipeline asks kbuild for.
    O ?= .
    CC ?= gcc
    tinyconfig:
    \t@mkdir -p $(O) && echo CONFIG_TINY=y > $(O)/.config
    olddefconfig:
    \t@true
    $(O)/obj.o: obj.c
    \t$(CC) -c obj.c -o $(O)/obj.o
    bzImage: $(O)/obj.o
    \t@mkdir -p $(O)/arch/x86/boot
    \t@cat $(O)/obj.o $(O)/.config > $(O)/arch/x86/boot/bzImage
    \t@echo "ffffffff81000000 T _stext" > $(O)/System.map
    kernelrelease:
    \t@echo 6.1.0-tiny
    .PHONY: tinyconfig olddefconfig bzImage kernelrelease
    """)
MERGE = "#!/bin/sh\n# merge_config.sh -m -O DIR BASE FRAGMENTS...\nbase=$4; shift 4; cat \"$@\" >> \"$base\"\n"


@pytest.fixture
def tiny(tmp_path: Path):
    """(fetched tree, cache dir, kernel settings, fragments) for a fresh tiny tree and cache."""
    repo = tmp_path / "tiny"
    (repo / "scripts" / "kconfig").mkdir(parents=True)
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    (repo / "Makefile").write_text(MAKEFILE)
    (repo / "obj.c").write_text('const char banner[] = "BENIGN-OBJECT";\n')
    merge = repo / "scripts" / "kconfig" / "merge_config.sh"
    merge.write_text(MERGE)
    merge.chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny tree")
    cache = tmp_path / "cache"
    fetched = fetch_tree(Tree("tiny", git=str(repo), ref="main"), cache)
    frag = tmp_path / "tiny.config"
    frag.write_text("CONFIG_FRAG=y\n")
    return fetched, cache, KernelConfig(base="tinyconfig", build_timeout_s=60), (frag,)


def _series(tmp_path: Path, name: str, fetched, makefile_lines: list[str] = (), obj: str | None = None) -> Candidate:
    """A candidate whose patch adds lines to the Makefile's top (run when make starts) and/or rewrites obj.c."""
    wt = tmp_path / f"wt-{name}"
    git(fetched.store, "worktree", "add", "-q", "--detach", str(wt), fetched.commit)
    if makefile_lines:
        (wt / "Makefile").write_text("\n".join(makefile_lines) + "\n" + MAKEFILE)
    if obj is not None:
        (wt / "obj.c").write_text(obj)
    diff = git(wt, "diff")
    git(fetched.store, "worktree", "remove", "--force", str(wt))
    patch = tmp_path / f"{name}.diff"
    patch.write_text(diff)
    return Candidate(name, "tiny", (Change("patch", patch.name, patch),))


def _build(cand: Candidate, fetched, cache: Path, kernel: KernelConfig, frags, tmp_path: Path, **kw):
    return build_kernel(apply_changes(cand, fetched), kernel, frags, cache, tmp_path / f"{cand.name}.log",
                        reuse=False, **kw)


def _victim(tmp_path: Path) -> Path:
    """A root-only file outside every build: what a hostile build would like to read or overwrite."""
    victim = tmp_path / "victim" / "secret"
    victim.parent.mkdir(mode=0o700)
    victim.write_text("TOP-SECRET-ROOT-ONLY\n")
    victim.chmod(0o600)
    return victim


def test_trusted_and_untrusted_builds_use_separate_build_directories(tiny, tmp_path: Path) -> None:
    fetched, cache, kernel, frags = tiny
    base = _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path)
    assert b"BENIGN-OBJECT" in base.bzimage.read_bytes() and b"CONFIG_FRAG=y" in base.bzimage.read_bytes()
    cand = _series(tmp_path, "fix", fetched, obj='const char banner[] = "FIXED-OBJECT";\n')
    fix = _build(cand, fetched, cache, kernel, frags, tmp_path)
    assert fix.in_place and b"FIXED-OBJECT" in fix.bzimage.read_bytes()
    slot = slot_path(cache, kernel, frags)
    # The series was built in the private copy; the trusted build directory still holds the baseline's object.
    assert b"BENIGN-OBJECT" in (slot / "src" / "build" / "obj.o").read_bytes()
    assert b"FIXED-OBJECT" in (slot / "scratch" / "obj.o").read_bytes()


def test_a_planted_object_never_reaches_another_candidates_kernel(tiny, tmp_path: Path) -> None:
    """#6: a series that builds and leaves a newer-than-source object behind."""
    fetched, cache, kernel, frags = tiny
    _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path)
    plant = ["$(shell printf TROJAN-OBJECT > $(O)/obj.o; touch -d 2099-01-01 $(O)/obj.o)"]
    evil = _build(_series(tmp_path, "evil", fetched, plant), fetched, cache, kernel, frags, tmp_path)
    assert b"TROJAN-OBJECT" in evil.bzimage.read_bytes()  # its own kernel: that is the series
    other = _build(_series(tmp_path, "other", fetched, obj='const char banner[] = "OTHER-OBJECT";\n'),
                   fetched, cache, kernel, frags, tmp_path)
    assert b"TROJAN" not in other.bzimage.read_bytes() and b"OTHER-OBJECT" in other.bzimage.read_bytes()
    again = _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path)
    assert b"TROJAN" not in again.bzimage.read_bytes() and b"BENIGN-OBJECT" in again.bzimage.read_bytes()


def test_a_planted_ccache_config_never_runs(tiny, tmp_path: Path) -> None:
    """#2: a ccache.conf with prefix_command, written by a confined build or found in an old cache."""
    fetched, cache, kernel, frags = tiny
    marker = tmp_path / "prefix-ran"
    script = tmp_path / "p.sh"
    script.write_text(f"#!/bin/sh\nid > {marker}\nexec \"$@\"\n")
    script.chmod(0o755)
    _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path)
    conf = f"prefix_command={script}"
    write = [f"$(shell echo '{conf}' > $$CCACHE_DIR/ccache.conf 2>/dev/null)",
             f"$(shell echo '{conf}' > /tmp/kpipe/ccache/ccache.conf 2>/dev/null)"]
    _build(_series(tmp_path, "plant", fetched, write, obj="int planted;\n"), fetched, cache, kernel, frags, tmp_path)
    assert not (cache / "ccache" / "ccache.conf").exists(), "an untrusted build wrote the shared ccache"
    # A cache from before the fix may hold one: no later build, confined or not, reads it.
    (cache / "ccache" / "ccache.conf").write_text(conf + "\n")
    for sandbox in (True, False):
        _build(_series(tmp_path, f"next-{sandbox}", fetched, obj=f"int n{int(sandbox)};\n"), fetched, cache,
               kernel, frags, tmp_path, sandbox=sandbox)
        _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path, sandbox=sandbox, clean=True)
    assert not marker.exists(), f"the planted prefix_command ran: {marker.read_text()}"


def test_an_untrusted_build_adds_nothing_to_the_shared_ccache(tiny, tmp_path: Path) -> None:
    fetched, cache, kernel, frags = tiny
    _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path)
    before = sorted(p.relative_to(cache / "ccache") for p in (cache / "ccache").rglob("*") if p.is_file())
    _build(_series(tmp_path, "new", fetched, obj="int brand_new_object;\n"), fetched, cache, kernel, frags, tmp_path)
    after = sorted(p.relative_to(cache / "ccache") for p in (cache / "ccache").rglob("*") if p.is_file())
    assert after == before


@pytest.mark.skipif(os.geteuid() != 0, reason="root follows links a build leaves only when it runs as root")
def test_root_never_writes_through_links_a_build_left(tiny, tmp_path: Path) -> None:
    """#1: every stamp and mark name, planted as a link to a root-only file; then builds of every kind."""
    fetched, cache, kernel, frags = tiny
    victim = _victim(tmp_path)
    names = [".kpipe-owner", "building", "build.owner", "scratch.owner", "scratch.commit", ".kpipe-fragments",
             "fragments", "ccache.conf"]
    links = " ".join(f"ln -sf {victim} $(O)/{n}; ln -sf {victim} /tmp/kpipe/ccache/{n};" for n in names)
    _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path)
    _build(_series(tmp_path, "links", fetched, [f"$(shell {links})"], obj="int l;\n"), fetched, cache, kernel,
           frags, tmp_path)
    for sandbox in (True, False):
        _build(_series(tmp_path, f"after-{sandbox}", fetched, obj=f"int a{int(sandbox)};\n"), fetched, cache,
               kernel, frags, tmp_path, sandbox=sandbox)
        _build(Candidate("base", "tiny"), fetched, cache, kernel, frags, tmp_path, sandbox=sandbox)
    assert victim.read_text() == "TOP-SECRET-ROOT-ONLY\n" and (victim.stat().st_mode & 0o777) == 0o600
    assert victim.stat().st_uid == 0


def test_artifacts_left_as_links_are_refused_not_copied(tiny, tmp_path: Path) -> None:
    """#3: bzImage, .config and System.map as symlinks to a root-only file, and the build exits 0."""
    fetched, cache, kernel, frags = tiny
    victim = _victim(tmp_path)
    cases = [("kernelrelease", art) for art in ("arch/x86/boot/bzImage", "System.map", ".config")]
    cases.append(("olddefconfig", ".config"))  # read by the pipeline before bzImage
    for target, art in cases:
        tag = f"{target}-{art.replace('/', '-')}"
        lines = [f"{target}: link-{tag}", f"link-{tag}:",
                 f"\t@mkdir -p $(O)/arch/x86/boot && ln -sf {victim} $(O)/{art}"]
        cand = _series(tmp_path, f"link-{tag}", fetched, lines, obj=f"int x{len(tag)};\n")
        with pytest.raises(BuildFailed) as info:
            _build(cand, fetched, cache, kernel, frags, tmp_path)
        assert "symbolic link" in str(info.value), str(info.value)
        assert "TOP-SECRET" not in str(info.value)
    leaked = [p for p in (cache / "builds").rglob("*") if p.is_file() and b"TOP-SECRET" in p.read_bytes()] \
        if (cache / "builds").exists() else []
    assert not leaked


def test_copy_regular_refuses_links_anywhere_on_the_path(tmp_path: Path) -> None:
    root = tmp_path / "build"
    (root / "arch").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "boot").mkdir(parents=True)
    (outside / "boot" / "bzImage").write_text("not the build's")
    (root / "arch" / "x86").symlink_to(outside)  # a directory link in the middle of the path
    with pytest.raises(UnsafeArtifact, match="x86"):
        copy_regular(root, "arch/x86/boot/bzImage", tmp_path / "copy")
    os.mkfifo(root / "fifo")
    with pytest.raises(UnsafeArtifact, match="regular"):
        copy_regular(root, "fifo", tmp_path / "copy")
    (root / "ok").write_text("fine")
    assert copy_regular(root, "ok", tmp_path / "copy") == 4 and (tmp_path / "copy").read_text() == "fine"


def test_the_build_sees_only_the_toolchain_and_its_tree(tiny, tmp_path: Path) -> None:
    """#5 and #40: a hostile Makefile that prints files of the machine into its error."""
    fetched, cache, kernel, frags = tiny
    repo_file = Path(__file__).resolve().parent.parent / "README.md"
    home_file = Path.home() / "secret-in-home"
    home_file.write_text("HOME-SECRET\n")
    home_file.chmod(0o644)
    var_file = Path("/var/tmp") / f"kpipe-probe-{os.getpid()}"
    var_file.write_text("VAR-SECRET\n")
    var_file.chmod(0o644)
    keys = cache / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "client_ed25519").write_text("KEY-SECRET\n")
    try:
        reads = " ".join(f"$(shell cat {p} 2>&1)" for p in (repo_file, home_file, var_file, keys / "client_ed25519",
                                                           "/etc/passwd", fetched.store / "HEAD"))
        cand = _series(tmp_path, "reader", fetched, [f"$(error exfiltrated: {reads})"])
        with pytest.raises(BuildFailed) as info:
            _build(cand, fetched, cache, kernel, frags, tmp_path)
        text = info.value.excerpt
        assert "exfiltrated" in text
        for secret in ("kpipe: does this kernel patch", "HOME-SECRET", "VAR-SECRET", "KEY-SECRET", "root:x:0",
                       "ref: refs/"):
            assert secret not in text, f"the build read {secret!r}"
    finally:
        var_file.unlink()
    assert self_check(tmp_path / "probe", secrets=(keys,)) == ""


def test_the_sandbox_probe_sees_what_it_is_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe is not vacuous: a file bound in for it to find is reported."""
    from pipeline.stages import sandbox

    monkeypatch.setattr(sandbox, "TOOLCHAIN_ETC", (*sandbox.TOOLCHAIN_ETC, "/etc/hostname"))
    assert "/etc/hostname" in self_check(tmp_path / "probe", secrets=(Path("/etc/hostname"),))
