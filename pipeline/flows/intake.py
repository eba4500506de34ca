"""b4 reads the thread where it serves: which revision is the newest, the patches in order with the
trailers the thread gave them (Reviewed-by, Acked-by, Tested-by from the replies, as `b4 am` adds them),
and the series' base-commit.

b4 runs in this process, offline (no network, no attestation, no configuration of the user's or of the
current repository), on messages kpipe has already size-checked; whatever it makes of them is checked
again by kpipe (paths, sizes) before git sees it. A thread b4 cannot read, or reads differently from
kpipe's own parser, is reported and kpipe's reading is used (flows/mail.py).
"""
from __future__ import annotations

import copy
import logging
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

_B4_LOCK = threading.Lock()  # b4 keeps its configuration in module globals
_MSGID = re.compile(r"^<?[^<>\s@]+@[^<>\s@]+>?$")


@dataclass(frozen=True)
class B4Reading:
    """What b4 made of a thread: None fields where it found nothing."""

    revision: int
    messages: tuple[EmailMessage, ...]  # the patches in order, with the thread's trailers added
    trailers: tuple[str, ...]  # "Reviewed-by: Name <addr> (patch 2)": what the replies added
    base_commit: str | None
    version: str  # b4's version, for the reply and metadata


def read_with_b4(msgs: list[EmailMessage], revision: int | None = None) -> tuple[B4Reading | None, str]:
    """(b4's reading of `revision`, or of the newest it finds; "") or (None, why b4 was not used)."""
    try:
        import b4  # deferred: b4 loads pygit2, requests and dkim, which only triage needs
    except ImportError:
        return None, "b4 is not installed (./setup.sh installs it): kpipe's own parser read the thread"
    with _B4_LOCK:
        saved = (b4.can_network, b4.MAIN_CONFIG, b4.USER_CONFIG)
        level = b4.logger.level
        try:
            b4.can_network = False
            b4.MAIN_CONFIG = {**copy.deepcopy(b4.DEFAULT_CONFIG), "attestation-policy": "off",
                              "attestation-check-dkim": "no"}
            b4.USER_CONFIG = {}
            b4.logger.setLevel(logging.CRITICAL + 1)
            return _read(b4, msgs, revision)
        except Exception as exc:  # noqa: BLE001 - a hostile thread may break b4 any way; ours still reads it
            return None, f"b4 could not read the thread ({type(exc).__name__}: {str(exc)[:120]})"
        finally:
            b4.can_network, b4.MAIN_CONFIG, b4.USER_CONFIG = saved
            b4.logger.setLevel(level)


def _read(b4: Any, msgs: list[EmailMessage], revision: int | None) -> tuple[B4Reading | None, str]:
    box = b4.LoreMailbox()
    for msg in msgs:
        box.add_message(msg)
    series = box.get_series(revision=revision, sloppytrailers=False, codereview_trailers=False)
    if series is None:
        return None, "b4 found no series in the thread"
    if not series.complete:
        return None, f"b4 finds v{series.revision} incomplete"
    trailers = []
    for i, lmsg in enumerate(series.patches[1:], start=1):
        for t in getattr(lmsg, "followup_trailers", []) if lmsg is not None else []:
            trailers.append(f"{t.as_string(omit_extinfo=True)} (patch {i})")
    cover = series.patches[0]
    for t in getattr(cover, "followup_trailers", []) if cover is not None else []:
        trailers.append(f"{t.as_string(omit_extinfo=True)} (the series)")
    am = series.get_am_ready(noaddtrailers=False, addmysob=False, addlink=False)
    return B4Reading(int(series.revision), tuple(am), tuple(trailers), series.base_commit,
                     str(getattr(b4, "__VERSION__", "?"))), ""


def fetch_by_message_id(message_id: str, dest: Path) -> Path:
    """Fetch a series with b4 (needs the archive to be reachable)."""
    b4 = shutil.which("b4")
    hint = ("save the series as an mbox (from your mail client, or `b4 am` where the archive is reachable) "
            "and pass its path instead")
    if not b4:
        raise UserError(f"cannot fetch {message_id}: b4 is not installed; {hint}")
    res = subprocess.run([b4, "-q", "am", "--no-cover", "-o", str(dest), "--", message_id.strip("<>")],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    mboxes = sorted(dest.glob("*.mbx"))
    if res.returncode != 0 or not mboxes:
        raise UserError(f"cannot fetch {message_id} with b4 (offline, or no such message): "
                        f"{(res.stderr or res.stdout).strip()[-300:]}\n{hint}")
    return mboxes[0]


def resolve_source(source: str, workdir: Path) -> Path:
    """A triage source as an mbox path: the file itself, or a Message-ID fetched with b4."""
    path = Path(source)
    if path.is_file():
        return path
    if _MSGID.match(source):
        return fetch_by_message_id(source, Path(tempfile.mkdtemp(prefix="kpipe-b4-", dir=workdir)))
    raise UserError(f"{source}: not a file, and not a Message-ID")
