"""Builds in place and confined: real kernel builds of the imported 6.1 tree (slow)."""
from __future__ import annotations

import difflib
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import FRAGMENT, REPO

from pipeline.candidates import Candidate, Change
from pipeline.config import KernelConfig
from pipeline.stages.build import build_kernel
from pipeline.stages.patch import apply_changes
from pipeline.stages.slots import slot_path
from pipeline.stages.steps import BuildFailed
from pipeline.util.gitutil import git

pytestmark = pytest.mark.slow
REGRESSION = REPO / "patches" / "0001-srcu-v5.19-rc1-expedited-policy-regression.patch"


def _insert_after_first_line(fetched, path: str, extra: list[str]) -> str:
    """A unified diff adding `extra` after the first line of `path` in the tree."""
    lines = git(["show", f"{fetched.commit}:{path}"], fetched.store).output.splitlines(keepends=True)
    new = lines[:1] + [x + "\n" for x in extra] + lines[1:]
    return "".join(difflib.unified_diff(lines, new, f"a/{path}", f"b/{path}"))


def candidate(tmp_path: Path, name: str, *patch_texts: str, files: tuple[Path, ...] = ()) -> Candidate:
    changes = [Change("patch", p.name, p) for p in files]
    for i, text in enumerate(patch_texts):
        p = tmp_path / f"{name}-{i}.diff"
        p.write_text(text)
        changes.append(Change("patch", p.name, p))
    return Candidate(name, "debian-6.1", tuple(changes))


def test_in_place_build_is_byte_identical_to_a_clean_one_and_a_failed_build_poisons_nothing(
        fetched, built_kernel, e2e_cache: Path, tmp_path: Path) -> None:
    kernel = KernelConfig()
    frags = (FRAGMENT,)

    def build(cand: Candidate, **kw):
        return build_kernel(apply_changes(cand, fetched), kernel, frags, e2e_cache, tmp_path / f"{cand.name}.log",
                            reuse=False, **kw)

    base = build(Candidate("base", "debian-6.1"))
    assert base.image_sha256 == built_kernel.image_sha256 or not built_kernel.image_sha256
    regression = build(candidate(tmp_path, "regression", files=(REGRESSION,)))
    assert regression.in_place and regression.sandboxed
    assert regression.image_sha256 != base.image_sha256
    # srcutree.c only: the .config made for the base is kept (the clean build below checks the image is
    # the same); a change to a Kconfig file makes the config again.
    assert ".config kept" in (tmp_path / "regression.log").read_text()
    kconfig = build(candidate(tmp_path, "kconfig", _insert_after_first_line(fetched, "init/Kconfig",
                                                                              ["# kpipe: a comment"])))
    assert kconfig.in_place and ".config kept" not in (tmp_path / "kconfig.log").read_text()
    broken = candidate(tmp_path, "broken", _insert_after_first_line(fetched, "kernel/rcu/srcutree.c",
                                                                    ["#error kpipe-broken"]))
    with pytest.raises(BuildFailed) as info:
        build(broken)
    assert "kpipe-broken" in info.value.excerpt and info.value.status == "build-failed"
    # Untrusted builds run in a fresh copy of the trusted build directory: the failure left nothing behind.
    again = build(candidate(tmp_path, "regression", files=(REGRESSION,)))
    assert again.in_place and again.image_sha256 == regression.image_sha256
    clean = build(candidate(tmp_path, "regression", files=(REGRESSION,)), clean=True)
    assert not clean.in_place
    assert clean.image_sha256 == regression.image_sha256, "an in-place build differs from a clean one"
    back = build(Candidate("base", "debian-6.1"))
    assert back.in_place and back.image_sha256 == base.image_sha256
    print(f"in place {regression.seconds:.1f} s, again {again.seconds:.1f} s, clean {clean.seconds:.1f} s, "
          f"back {back.seconds:.1f} s")


@pytest.fixture(scope="module")
def hostile_slot(fetched, e2e_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """Config fragments of their own, so hostile builds get a slot of their own (removed afterwards)."""
    frag = tmp_path_factory.mktemp("hostile") / "hostile.config"
    frag.write_text("# hostile-build tests\nCONFIG_KVM=y\n")
    kernel = KernelConfig(build_timeout_s=30)
    slot = slot_path(e2e_cache, kernel, (FRAGMENT, frag))
    yield kernel, (FRAGMENT, frag)
    shutil.rmtree(slot, ignore_errors=True)
    git(["worktree", "prune"], fetched.store)


def _top_makefile(fetched, extra: list[str]) -> str:
    """A diff adding lines after the first line of the top-level Makefile (read when make starts)."""
    return _insert_after_first_line(fetched, "Makefile", extra)


def test_hostile_makefile_cannot_write_outside_its_build_directory(fetched, e2e_cache: Path, tmp_path: Path,
                                                                    hostile_slot) -> None:
    kernel, frags = hostile_slot
    target = Path("/var/tmp") / f"kpipe-pwned-{os.getpid()}"
    line = (f"$(if $(shell touch {target} >/dev/null 2>&1 && echo ok),,"
            f"$(error could not write {target}: $(shell touch {target} 2>&1)))")
    cand = candidate(tmp_path, "writer", _top_makefile(fetched, [line]))
    with pytest.raises(BuildFailed) as info:
        build_kernel(apply_changes(cand, fetched), kernel, frags, e2e_cache, tmp_path / "writer.log")
    assert not target.exists()
    # /var is not even in the sandbox; the rest of it is read-only.
    assert "No such file or directory" in info.value.excerpt or "Read-only file system" in info.value.excerpt


def test_hostile_makefile_cannot_reach_the_network(fetched, e2e_cache: Path, tmp_path: Path, hostile_slot) -> None:
    kernel, frags = hostile_slot
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []

    def watch() -> None:
        for _ in range(120):
            try:
                accepted.append(server.accept())
                return
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 5)' 2>&1 | tail -1"
    cand = candidate(tmp_path, "caller", _top_makefile(fetched, [f"$(error network: $(shell {probe}))"]))
    try:
        with pytest.raises(BuildFailed) as info:
            build_kernel(apply_changes(cand, fetched), kernel, frags, e2e_cache, tmp_path / "caller.log")
    finally:
        server.close()
        t.join(5)
    assert not accepted, "the confined build reached a loopback listener"
    # Its own network namespace: a loopback of its own with nothing listening, no route anywhere else.
    assert "Connection refused" in info.value.excerpt or "unreachable" in info.value.excerpt


def test_hostile_makefile_that_runs_forever_is_stopped(fetched, e2e_cache: Path, tmp_path: Path,
                                                       hostile_slot) -> None:
    kernel, frags = hostile_slot
    marker = f"sleep 9{os.getpid()}"  # a command line no other process has
    cand = candidate(tmp_path, "forever", _top_makefile(fetched, [f"$(shell {marker})"]))
    with pytest.raises(BuildFailed) as info:
        build_kernel(apply_changes(cand, fetched), kernel, frags, e2e_cache, tmp_path / "forever.log")
    assert info.value.status == "build-timeout"
    assert "build_timeout_s = 30" in str(info.value)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout.split()
    assert not left, "the hostile build outlived its time limit"


def test_a_later_fragment_overrides_an_earlier_one_and_only_its_value_is_checked(tmp_path: Path) -> None:
    """hz-1000.config after kvm-host.config: HZ_250 off, HZ_1000 on, as merge_config.sh merges them;
    what the base asked for and the later fragment turned off is not 'dropped'."""
    from pipeline.stages.kconfig import ConfigOptionDropped, check_config

    base, hz = tmp_path / "base.config", tmp_path / "hz.config"
    base.write_text("CONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_KVM=y\n")
    hz.write_text("# CONFIG_HZ_250 is not set\nCONFIG_HZ_1000=y\nCONFIG_HZ=1000\n")
    final = {"CONFIG_HZ_1000": "y", "CONFIG_HZ": "1000", "CONFIG_KVM": "y"}
    check_config(tmp_path, final, (base, hz))
    with pytest.raises(ConfigOptionDropped) as info:
        check_config(tmp_path, final | {"CONFIG_HZ": "250"}, (base, hz))
    assert "CONFIG_HZ=1000 (got 250) from hz.config" in info.value.excerpt


def test_which_changed_files_make_the_config_again() -> None:
    from pipeline.stages.kconfig import shapes_config

    assert not shapes_config("kernel/rcu/srcutree.c") and not shapes_config("include/linux/srcutree.h")
    assert not shapes_config("arch/x86/kvm/Makefile")
    for path in ("init/Kconfig", "arch/x86/Kconfig.debug", "kernel/configs/tiny.config",
                 "arch/x86/configs/x86_64_defconfig", "scripts/kconfig/merge_config.sh", "Makefile",
                 "scripts/Kconfig.include"):
        assert shapes_config(path), path
