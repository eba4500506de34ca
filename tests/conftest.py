"""Shared fixtures: isolated caches for unit tests, one shared kernel and test host for e2e tests."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.candidates import Candidate, Tree
from pipeline.config import KernelConfig, TestHost
from pipeline.machines.accel import choose_accelerator
from pipeline.machines.executor import LocalExecutor
from pipeline.stages.boot import boot_test_host
from pipeline.stages.build import build_kernel
from pipeline.stages.fetch import fetch_tree
from pipeline.stages.initramfs import build_initramfs
from pipeline.stages.patch import apply_changes

REPO = Path(__file__).resolve().parent.parent
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = REPO / "vm-templates/kernel/kvm-host.config"


def qemu_pids() -> set[int]:
    """Running QEMU processes of test hosts (zombies and the shells that started QEMU do not count)."""
    out = subprocess.run(["pgrep", "-f", "kpipe-test-host"], capture_output=True, text=True, check=False).stdout
    pids = set()
    for p in out.split():
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if comm.startswith("qemu-system") and state != "Z":
            pids.add(int(p))
    return pids


def small_config(tmp_path: Path, candidates: str = "", cycles: int = 300, counted: int = 2,
                 repetitions: str = "") -> Path:
    """A pipeline.yaml for end-to-end tests: candidate 'base' on the imported 6.1 tree, plus `candidates`
    (YAML list items, indented two spaces), no warm-up. The disturbed-run limits are off: these tests
    check other behaviours and must not fail on a CI machine whose hypervisor steals half its CPUs (the
    rule has its own tests in test_measure.py).  `repetitions`: more keys of that mapping ("looks: 3, ...")."""
    path = tmp_path / "pipeline.yaml"
    more = f", {repetitions}" if repetitions else ""
    path.write_text(f"""
trees:
  debian-6.1: {{tarball: {TARBALL}}}
baseline: base
candidates:
  - {{name: base, tree: debian-6.1}}
{candidates}
kernel: {{fragments: [{FRAGMENT}]}}
test_host:
  qemu_template: {REPO}/vm-templates/qemu/x86_64.cmd.j2
  initramfs_recipe: {REPO}/vm-templates/initramfs/recipe.yaml
workload: {{cycles: {cycles}, spin_mode: loop, timeout_s: 240}}
repetitions: {{warmup: 0, counted: {counted}, retries: 2, max_foreign_cpus: 0, max_steal_cpus: 0{more}}}
""")
    return path


# -- end-to-end: one real kernel and one booted test host for the whole session --------------


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the user's real HOME or caches (e2e tests opt into a shared cache explicitly)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("KPIPE_CACHE_DIR", str(home / ".cache" / "kpipe"))
    return home


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> str:
    full = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.org",
            "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.org", **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, env=full, check=True, capture_output=True, text=True,
                          input=input).stdout


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    """A small git history: a file to patch, a commit to revert."""
    repo = tmp_path / "src"
    (repo / "kernel" / "rcu").mkdir(parents=True)
    git(tmp_path, "init", "-q", "-b", "master", str(repo))
    (repo / "kernel" / "rcu" / "srcutree.c").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    (repo / "README").write_text("small tree\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    (repo / "kernel" / "rcu" / "srcutree.c").write_text(
        "".join(f"line {i}\n" if i != 20 else "line 20 changed\n" for i in range(1, 41)))
    git(repo, "commit", "-q", "-a", "-m", "change line 20")
    git(repo, "tag", "v1")
    return repo


@pytest.fixture(scope="session")
def e2e_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("KPIPE_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("kpipe-cache")


@pytest.fixture(scope="session")
def host_settings() -> TestHost:
    return TestHost(qemu_template=REPO / "vm-templates/qemu/x86_64.cmd.j2",
                    initramfs_recipe=REPO / "vm-templates/initramfs/recipe.yaml", cpus=2, memory_mb=1024,
                    boot_timeout_s=240)


@pytest.fixture(scope="session")
def fetched(e2e_cache: Path):
    return fetch_tree(Tree("debian-6.1", tarball=TARBALL), e2e_cache)


@pytest.fixture(scope="session")
def built_kernel(fetched, e2e_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    patched = apply_changes(Candidate("e2e-baseline", "debian-6.1"), fetched)
    log = tmp_path_factory.mktemp("build") / "build.log"
    return build_kernel(patched, KernelConfig(), (FRAGMENT,), e2e_cache, log)


@pytest.fixture(scope="session")
def initramfs(e2e_cache: Path):
    return build_initramfs(REPO / "vm-templates/initramfs/recipe.yaml", e2e_cache)


@pytest.fixture(scope="session")
def accel():
    return choose_accelerator("auto")


@pytest.fixture(scope="session")
def test_host(built_kernel, initramfs, host_settings, accel, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("host")
    with boot_test_host(LocalExecutor(), built_kernel, initramfs, host_settings, (), run_dir, "shared",
                        accel) as host:
        yield host
