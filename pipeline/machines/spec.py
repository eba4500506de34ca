"""The pool of test machines as pipeline.yaml (or a separate hosts file) declares it."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.util.yamlreader import Reader, read_yaml

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class HostSpec:
    """A machine test hosts run on: this one (`local: true`) or one reached over SSH."""

    name: str
    local: bool = False
    host: str = ""
    port: int = 22
    user: str = "root"
    key: Path | None = None  # None: the SSH agent and ~/.ssh keys
    known_hosts: Path = Path("~/.ssh/known_hosts")
    workdir: str = "/var/tmp/kpipe"
    kind: str = ""  # "": derived from what the host check finds (accelerator, CPU model, CPU count)
    min_free_gb: float = 2.0
    distcc: str = ""  # "PORT/JOBS" of a distccd there that builds may use
    share_cpus: bool = False  # allow jobs at once with other pool hosts on the same machine (same boot_id)

    @property
    def address(self) -> str:
        return "this machine" if self.local else f"{self.user}@{self.host}:{self.port}"


LOCAL_HOST = HostSpec(name="local", local=True)


def load_hosts(path: str | Path) -> tuple[HostSpec, ...]:
    """The pool from a hosts file (`hosts:` and nothing else)."""
    data, r = read_yaml(path, "hosts file")
    data = r.mapping(data, "", ("hosts",), ("hosts",))
    return hosts_from_yaml(r, data["hosts"])


HOST_KEYS = ("name", "local", "host", "port", "user", "key", "known_hosts", "workdir", "kind", "min_free_gb",
             "distcc", "share_cpus")
DISTCC_RE = re.compile(r"^[0-9]{1,5}/[0-9]{1,3}$")


def hosts_from_yaml(r: Reader, data: Any) -> tuple[HostSpec, ...]:
    """The `hosts:` list of pipeline.yaml as host specs, errors with key and line."""
    if data is None:
        return (LOCAL_HOST,)
    items = r.typed(data, "hosts", list, lambda x: len(x) > 0, "list at least one host")
    hosts: list[HostSpec] = []
    for i, item in enumerate(items):
        p = f"hosts[{i}]"
        m = r.mapping(item, p, HOST_KEYS, ("name",))
        name = r.typed(m["name"], f"{p}.name", str, lambda x: bool(NAME_RE.match(x)),
                       "letters, digits, '.', '_' and '-'")
        if name in {h.name for h in hosts}:
            raise r.error(f"{p}.name", f"duplicate host name {name!r}")
        local = r.typed(m.get("local", False), f"{p}.local", bool)
        if local:
            extra = sorted(set(m) - {"name", "local", "kind", "min_free_gb", "workdir", "share_cpus"})
            if extra:
                raise r.error(f"{p}.{extra[0]}", "not used for the local machine (local: true)")
        elif "host" not in m:
            raise r.error(p, "missing required key 'host' (or set local: true for this machine)")
        kw: dict[str, Any] = {"name": name, "local": local}
        if "host" in m:
            kw["host"] = r.typed(m["host"], f"{p}.host", str, lambda x: bool(re.match(r"^[A-Za-z0-9.:_-]+$", x)),
                                 "a host name or address")
        if "port" in m:
            kw["port"] = r.typed(m["port"], f"{p}.port", int, lambda x: 0 < x < 65536, "1 to 65535")
        if "user" in m:
            kw["user"] = r.typed(m["user"], f"{p}.user", str, lambda x: bool(NAME_RE.match(x)), "a user name")
        if "key" in m:
            kw["key"] = r.existing_file(m["key"], f"{p}.key")
            if kw["key"].stat().st_mode & 0o077:
                raise r.error(f"{p}.key", f"{m['key']} can be read by other users; ssh refuses such a key too "
                              f"(chmod 600 {m['key']})")
        if not local:
            kw["known_hosts"] = (r.existing_file(m["known_hosts"], f"{p}.known_hosts") if "known_hosts" in m
                                 else Path(os.path.expanduser("~/.ssh/known_hosts")))
        if "workdir" in m:
            kw["workdir"] = r.typed(m["workdir"], f"{p}.workdir", str, lambda x: x.startswith("/") and ".." not in x,
                                    "an absolute path without '..'")
        if "kind" in m:
            kw["kind"] = r.typed(m["kind"], f"{p}.kind", str, lambda x: 0 < len(x) <= 100, "1 to 100 characters")
        if "min_free_gb" in m:
            kw["min_free_gb"] = r.typed(m["min_free_gb"], f"{p}.min_free_gb", float, lambda x: x >= 0, "must be >= 0")
        if "distcc" in m:
            kw["distcc"] = r.typed(m["distcc"], f"{p}.distcc", str, lambda x: bool(DISTCC_RE.match(x)),
                                   "PORT/JOBS of the distccd on that host, e.g. 3632/4")
        if "share_cpus" in m:
            kw["share_cpus"] = r.typed(m["share_cpus"], f"{p}.share_cpus", bool)
        hosts.append(HostSpec(**kw))
    return tuple(hosts)
