"""Machines that run test hosts: their /dev/kvm facts, and the one registry of QEMU accelerators.

The accelerator is chosen once per machine, as an `Accelerator` value, and handed
down to the boot; the config checks names against the same registry.
"""
from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from typing import NamedTuple

from pipeline.machines.probe import local_probe


class Accelerator(NamedTuple):
    """A chosen accelerator: its registry name, its piece of the QEMU command line, and why it was chosen."""

    name: str
    args: str
    reason: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.args)


def _tcg() -> tuple[str, str]:
    # -cpu max exposes svm+npt, so the test host can run KVM guests (nested, emulated).
    return "-accel tcg,thread=multi -cpu max", "TCG with -cpu max (nested SVM for the workload's KVM guests)"


def _kvm() -> tuple[str, str]:
    return "-accel kvm -cpu host", "KVM with -cpu host"


ACCELERATORS: dict[str, Callable[[], tuple[str, str]]] = {"kvm": _kvm, "tcg": _tcg}
CHOICES = ("auto", *ACCELERATORS)  # what pipeline.yaml may ask for


def local_kvm_facts() -> dict[str, str]:
    """This machine's /dev/kvm facts, from the same probe every pool host runs."""
    return local_probe(tempfile.gettempdir())


def kvm_verdict(facts: dict[str, str]) -> tuple[bool, str]:
    """(usable, why) for KVM on this machine, from its probed facts (a PVM /dev/kvm cannot boot us)."""
    if not facts.get("kvm_exists"):
        return False, "/dev/kvm does not exist"
    if not facts.get("kvm_rw"):
        return False, "/dev/kvm is not readable and writable by this user"
    if facts.get("kvm_pvm"):
        return False, ("/dev/kvm is a PVM hypervisor (kvm_pvm), which cannot boot a stock kernel under "
                       "qemu -enable-kvm")
    return True, "/dev/kvm is usable"


def choose_accelerator(wanted: str, facts: dict[str, str] | None = None) -> Accelerator:
    """'auto' picks KVM only where it can boot the test host. `facts` are a machine's /dev/kvm facts
    (remote.PROBE); None means this machine."""
    if wanted == "auto":
        ok, why = kvm_verdict(local_kvm_facts() if facts is None else facts)
        name = "kvm" if ok else "tcg"
        args, what = ACCELERATORS[name]()
        return Accelerator(name, args, f"{what}: {why}" if ok else f"{what}, because {why}")
    if wanted not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {wanted!r}; valid: {', '.join(CHOICES)}")
    args, what = ACCELERATORS[wanted]()
    return Accelerator(wanted, args, f"{what} (as configured)")
