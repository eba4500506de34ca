"""Test-host userspace: an initramfs assembled from Debian's binaries, cached by content.

Also owns the SSH keys: one test-host key and one client key per cache,
both mode 0600, so the pipeline can verify the host it logs in to.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import InfraError, UserError
from pipeline.util.proc import run

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = "root:x:0:\n"


@dataclass(frozen=True)
class SshKeys:
    """The client key kpipe logs in with and the test host's host key (one per kernel image)."""

    client_key: Path  # OpenSSH private key, for fabric
    client_pub: str
    host_key: Path  # dropbear format, goes into the initramfs
    host_pub: str  # "ssh-ed25519 AAAA..." to check the host we reach


@dataclass(frozen=True)
class Initramfs:
    """The test host's userspace as a cpio archive, cached by the hash of its recipe."""

    path: Path
    sha256: str
    ready_marker: str
    keys: SshKeys
    reused: bool


def ensure_keys(cache_dir: Path) -> SshKeys:
    """The SSH keys under the cache, made on first use (0600, owned by this user)."""
    keydir = cache_dir / "keys"
    keydir.mkdir(parents=True, exist_ok=True)
    os.chmod(keydir, 0o700)
    client = keydir / "client_ed25519"
    host = keydir / "host_ed25519.dropbear"
    # A key is made in a scratch folder and renamed into place, public half first: a run killed while
    # making one leaves no half-written key, and a key that does not load is made again.
    loads = client.with_suffix(".pub").exists() and run(["ssh-keygen", "-y", "-f", client], check=False).returncode == 0
    if not loads:
        with tempfile.TemporaryDirectory(dir=keydir) as tmp:
            new = Path(tmp) / client.name
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kpipe-client", "-f", new])
            os.replace(new.with_suffix(".pub"), client.with_suffix(".pub"))
            os.replace(new, client)
    if run(["dropbearkey", "-y", "-f", host], check=False).returncode != 0:
        with tempfile.TemporaryDirectory(dir=keydir) as tmp:
            new = Path(tmp) / host.name
            run(["dropbearkey", "-t", "ed25519", "-f", new])
            os.replace(new, host)
    os.chmod(client, 0o600)
    os.chmod(host, 0o600)
    host_pub = next(line for line in run(["dropbearkey", "-y", "-f", host]).output.splitlines()
                    if line.startswith("ssh-"))
    return SshKeys(client, client.with_suffix(".pub").read_text().strip(), host,
                   " ".join(host_pub.split()[:2]))


def _shared_libs(binary: Path) -> list[Path]:
    res = run(["ldd", binary], check=False)
    if "not a dynamic executable" in res.output or "statically linked" in res.output:
        return []
    libs = []
    for line in res.output.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def build_initramfs(recipe_path: Path, cache_dir: Path, log_file: Path | None = None) -> Initramfs:
    """Assemble (or reuse) the initramfs described by recipe_path."""
    recipe = yaml.safe_load(recipe_path.read_text())
    keys = ensure_keys(cache_dir)
    base = recipe_path.parent
    entries: dict[str, Path] = {}  # path inside -> host source
    missing = []
    for src, dest in recipe.get("binaries", {}).items():
        src_path = Path(src)
        if not src_path.exists():
            missing.append(src)
            continue
        entries[dest] = src_path
        for lib in _shared_libs(src_path):
            entries[str(lib)] = lib
    if missing:
        raise UserError(f"test-host userspace: missing {', '.join(missing)}; install with "
                        f"'apt-get install {' '.join(recipe.get('packages', []))}'")
    for src, dest in recipe.get("files", {}).items():
        entries[dest] = (base / src).resolve()
    h = hashlib.sha256()
    h.update(recipe_path.read_bytes())
    for dest in sorted(entries):
        h.update(dest.encode())
        h.update(hashlib.sha256(entries[dest].read_bytes()).digest())
    h.update(keys.client_pub.encode())
    h.update(keys.host_key.read_bytes())
    digest = h.hexdigest()
    out = cache_dir / "initramfs" / f"{digest[:16]}.cpio.gz"
    if out.exists():
        return Initramfs(out, digest, recipe["ready_marker"], keys, True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kpipe-initramfs-") as tmp:
        root = Path(tmp)
        for d in recipe.get("directories", []):
            (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for dest, src in entries.items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=True)
        for d in ("lib64", "lib"):
            (root / d).mkdir(exist_ok=True)
        (root / "etc" / "passwd").write_text(PASSWD)
        (root / "etc" / "group").write_text(GROUP)
        (root / "etc" / "shells").write_text("/bin/sh\n")
        (root / "root" / ".ssh" / "authorized_keys").write_text(keys.client_pub + "\n")
        shutil.copy2(keys.host_key, root / "etc" / "dropbear" / "dropbear_ed25519_host_key")
        os.chmod(root / "init", 0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", root / "initramfs.cpio"],
                   cwd=root, input_text="\n".join(["."] + names) + "\n", log_file=log_file, check=False)
        if cpio.returncode != 0:
            raise InfraError(f"cpio failed: {cpio.tail(5)}")
        tmp_out = out.with_suffix(".tmp")
        with open(root / "initramfs.cpio", "rb") as src_f, gzip.GzipFile(tmp_out, "wb", mtime=0) as gz:
            shutil.copyfileobj(src_f, gz)
        os.replace(tmp_out, out)
    return Initramfs(out, digest, recipe["ready_marker"], keys, False)


def with_own_host_key(initramfs: Initramfs, kernel_sha256: str) -> Initramfs:
    """The initramfs with a host key that only boots of this one kernel image use.

    The kernel under test can read its initramfs, so a host key shared by every candidate would let one
    candidate's kernel learn the key that other candidates' test hosts prove themselves with. Each kernel
    image gets a key of its own in a second cpio archive appended to the cached one (the kernel unpacks
    both, the later file wins); the pipeline accepts only that key when it logs in to that kernel."""
    dest = initramfs.path.parent / "per-kernel" / f"{initramfs.sha256[:16]}-{kernel_sha256[:16]}.initrd"
    pub_file = dest.with_suffix(".pub")
    if dest.exists() and pub_file.exists():
        keys = dataclasses.replace(initramfs.keys, host_pub=pub_file.read_text().strip())
        return dataclasses.replace(initramfs, path=dest, keys=keys)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dest.parent, 0o700)
    with tempfile.TemporaryDirectory(prefix="kpipe-hostkey-", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        keyfile = root / "etc" / "dropbear" / "dropbear_ed25519_host_key"
        keyfile.parent.mkdir(parents=True)
        run(["dropbearkey", "-t", "ed25519", "-f", keyfile], timeout=60)
        pub = next(line for line in run(["dropbearkey", "-y", "-f", keyfile], timeout=60).output.splitlines()
                   if line.startswith("ssh-"))
        cpio = run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", Path(tmp) / "key.cpio"], cwd=root,
                   input_text="etc\netc/dropbear\netc/dropbear/dropbear_ed25519_host_key\n", check=False, timeout=60)
        if cpio.returncode != 0:
            raise InfraError(f"cpio failed: {cpio.tail(5)}")
        joined = Path(tmp) / "joined"
        with open(joined, "wb") as out:
            with open(initramfs.path, "rb") as base:
                shutil.copyfileobj(base, out)
            # The kernel reads an uncompressed archive only from a 4-byte boundary (zeros between are skipped).
            out.write(b"\0" * (-out.tell() % 512))
            out.write((Path(tmp) / "key.cpio").read_bytes())
        os.chmod(joined, 0o600)
        host_pub = " ".join(pub.split()[:2])
        pub_tmp = Path(tmp) / "pub"
        pub_tmp.write_text(host_pub + "\n")
        os.replace(joined, dest)
        os.replace(pub_tmp, pub_file)
    keys = dataclasses.replace(initramfs.keys, host_pub=host_pub)
    return dataclasses.replace(initramfs, path=dest, keys=keys)
