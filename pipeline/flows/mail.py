"""mail: a posted series in, a reply out. The email is untrusted: parsed with the standard library,
size-checked, complete or refused, its diffs' paths checked before git sees them, and nothing from it
reaches a shell; the reply is threaded, 72 columns, with no trailer but the pipeline's own."""
from __future__ import annotations

import email
import email.policy
import email.utils
import mailbox
import os
import re
import textwrap
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.flows.intake import read_with_b4
from pipeline.stages.patchcheck import MAX_PATCH_BYTES, check_patch_paths
from pipeline.util import proc
from pipeline.util.untrusted import clean, defuse_trailers

MAX_SERIES_BYTES = 20 * 1024 * 1024

MAX_SERIES_PATCHES = 100

_PATCH_NUM = re.compile(r"\[[^\]]*?\b(\d{1,4})/(\d{1,4})\b[^\]]*\]")  # no series has 10,000 patches

_BASE_COMMIT = re.compile(r"^base-commit: ([0-9a-f]{7,40})\s*$", re.M)


_VERSION = re.compile(r"\[[^\]]*?\bv(\d{1,4})\b[^\]]*\]", re.I)

_REPLY = re.compile(r"^\s*(re|aw|sv|antw)\s*:", re.I)

WIDTH = 72

MAX_LINE = 900  # under SMTP's 998 bytes, with room for a multi-byte character

MAX_CC = 40  # a reply is never a mass mailing under the operator's From: (a series may Cc thousands)

@dataclass(frozen=True)
class SeriesPatch:
    """One patch of a posted series, as a file git can apply, with its number, subject and author."""

    number: int
    subject: str
    author: str
    message_id: str
    path: Path

@dataclass(frozen=True)
class Series:
    """A posted series: its patches in order, what to reply to and whom, its base-commit and revision."""

    subject: str  # of the cover letter, else of the first patch
    message_id: str  # what the reply threads under
    references: str
    sender: str
    to: list[str]
    cc: list[str]
    patches: tuple[SeriesPatch, ...]
    base_commit: str | None
    skipped: tuple[str, ...]  # subjects of messages that were not patches (cover letter, replies)
    date: str = ""  # of the message replied to
    revision: int = 1  # the version tested, the newest the thread holds
    trailers: tuple[str, ...] = ()  # what the thread's replies added (b4), in the commits tested
    intake: str = ""  # who read the thread: "b4 0.16.0", or kpipe's parser and why

def _text(msg: Any) -> str:
    parts = [p for p in msg.walk() if p.get_content_type() == "text/plain"] if msg.is_multipart() else [msg]
    chunks = []
    for part in parts:
        payload: Any = part.get_payload(decode=True) or b""
        try:
            chunks.append(payload.decode(part.get_content_charset() or "utf-8", errors="replace"))
        except LookupError:  # a charset Python does not know: read it as UTF-8, replacing what is not
            chunks.append(payload.decode("utf-8", errors="replace"))
    return "\n".join(chunks)

def _has_diff(text: str) -> bool:
    return bool(re.search(r"^(diff --git |--- \S+\n\+\+\+ \S+)", text, re.M))

def _load_messages(source: Path) -> list[Any]:
    size = source.stat().st_size
    if size > MAX_SERIES_BYTES:
        raise UserError(f"{source}: {size} bytes is larger than the {MAX_SERIES_BYTES} byte limit; refused")
    head = source.read_bytes()[:5]
    if head.startswith(b"From "):
        msgs = [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in mailbox.mbox(source)]
    else:  # a maildir message or a single .eml
        msgs = [email.message_from_bytes(source.read_bytes(), policy=email.policy.default)]
    if len(msgs) > MAX_SERIES_PATCHES + 1:
        raise UserError(f"{source}: {len(msgs)} messages; at most {MAX_SERIES_PATCHES} patches per series")
    return msgs

def parse_series(source: Path, workdir: Path) -> Series:
    """Split a posted series into ordered patch files, skipping the cover letter and non-patches."""
    try:
        return _parse_series(source, workdir)
    except RecursionError:  # MIME nested thousands deep: the email package recurses once per level
        raise UserError(f"{source}: its MIME structure is nested too deeply to read; refused") from None

def _parse_series(source: Path, workdir: Path) -> Series:
    msgs = _load_messages(source)
    patches: list[tuple[int, Any, str]] = []
    skipped: list[str] = []
    cover: Any = None
    base_commit = None
    versions: dict[int, int] = {}  # id(msg) -> series version (v1 when the subject names none)
    covers: list[Any] = []
    for msg in msgs:
        subject = _clip_words(str(msg.get("Subject", "")))
        if _REPLY.match(subject):
            skipped.append(subject)  # a review reply, even one that quotes or suggests a diff
            continue
        body = _text(msg)
        m = _BASE_COMMIT.search(body)
        if m:
            base_commit = base_commit or m.group(1)
        v = _VERSION.search(subject)
        versions[id(msg)] = int(v.group(1)) if v else 1
        num = _PATCH_NUM.search(subject)
        if num and int(num.group(1)) == 0:
            covers.append(msg)
            skipped.append(subject)
            continue
        if not _has_diff(body):
            skipped.append(subject)
            continue
        patches.append((int(num.group(1)) if num else 1, msg, subject))
    if not patches:
        raise UserError(f"{source}: no patch found (no diff in any message); is this a patch email?")
    # A thread that holds several versions of the series: the newest one is the series.
    newest = max(versions[id(m)] for _, m, _ in patches)
    for _, m, subj in patches:
        if versions[id(m)] != newest:
            skipped.append(subj)
    patches = [p for p in patches if versions[id(p[1])] == newest]
    cover = next((c for c in covers if versions[id(c)] == newest), None)
    patches.sort(key=lambda p: p[0])
    _check_complete(patches)
    # b4 where it serves (the thread's trailers in the commits, its base-commit), checked against our reading;
    # the newest revision is the highest number (b4 alone would take the latest posted).
    reading, intake = read_with_b4(msgs, newest)
    if reading is not None and (reading.revision != newest or len(reading.messages) != len(patches)):
        intake = (f"b4 read v{reading.revision} with {len(reading.messages)} patch(es) where kpipe reads "
                  f"v{newest} with {len(patches)}: kpipe's reading is tested")
        reading = None
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (n, msg, subject) in enumerate(patches):
        raw = (reading.messages[i] if reading else msg).as_bytes(policy=email.policy.SMTP.clone(linesep="\n"))
        if len(raw) > MAX_PATCH_BYTES:
            raise UserError(f"patch {n} ({subject[:60]}) is larger than {MAX_PATCH_BYTES} bytes; refused")
        text = raw.decode("utf-8", errors="replace")
        check_patch_paths(text, f"patch {n} ({subject[:60]})")
        path = workdir / f"{i + 1:04d}.patch"
        path.write_bytes(b"From kpipe-triage Mon Sep 17 00:00:00 2001\n" + raw)
        out.append(SeriesPatch(n, subject, str(msg.get("From", "")), str(msg.get("Message-ID", "")).strip(), path))
    first = cover or patches[0][1]
    ref_list = str(first.get("References", "")).split()
    msgid = str(first.get("Message-ID", "")).strip()
    return Series(subject=_clip_words(str(first.get("Subject", ""))), message_id=msgid,
                  references=" ".join(ref_list + ([msgid] if msgid else [])), sender=str(first.get("From", "")),
                  to=_addresses(first, "To"), cc=_addresses(first, "Cc"),
                  patches=tuple(out), base_commit=(reading.base_commit if reading else None) or base_commit,
                  skipped=tuple(skipped), date=str(first.get("Date", "")), revision=newest,
                  trailers=tuple(_clip_words(t) for t in reading.trailers) if reading else (),
                  intake=f"b4 {reading.version}" if reading else intake)

def _check_complete(patches: list[tuple[int, Any, str]]) -> None:
    """A series is evaluated as its author posted it: every patch n/N of the newest version, once each."""
    totals = {int(m.group(2)) for _, _, subj in patches if (m := _PATCH_NUM.search(subj))}
    numbers = [n for n, _, _ in patches]
    if len(totals) > 1:
        raise UserError(f"the patches disagree on the size of the series ({', '.join(map(str, sorted(totals)))}); "
                        f"pass one version of the series")
    if len(set(numbers)) != len(numbers):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise UserError(f"patch {dup[0]} appears more than once in the newest version; pass one copy of the series")
    if totals:
        missing = sorted(set(range(1, totals.pop() + 1)) - set(numbers))
        if missing:
            raise UserError(f"the series is incomplete: patch {', '.join(map(str, missing[:10]))} of "
                            f"{max(numbers + missing)} missing; save the whole thread (or `b4 am` it) and pass that")

def _clip_words(text: str) -> str:
    """Whitespace collapsed, and any word longer than 200 characters cut: a mail line cannot fold it,
    and no real subject has one."""
    return " ".join(w if len(w) <= 200 else w[:200] + "..." for w in clean(text).split())

def _addresses(msg: Any, header: str) -> list[str]:
    """The header's addresses, display names kept ("Paul E. McKenney <paulmck@kernel.org>")."""
    pairs = email.utils.getaddresses([str(v) for v in msg.get_all(header, [])])
    return [email.utils.formataddr((name, addr)) for name, addr in pairs if addr]

def reply_sender(setting: str = "") -> tuple[str, str]:
    """(From address, warning): report.reply_from, else $KPIPE_FROM, else git's user.name and user.email,
    else a placeholder with a warning."""
    if setting:
        return setting, ""
    env = os.environ.get("KPIPE_FROM", "").strip()
    if env:
        return env, ""
    # The user's own git identity (gitutil.git ignores the user's configuration on purpose).
    name = proc.run(["git", "config", "--get", "user.name"], check=False, timeout=10).output.strip()
    mail = proc.run(["git", "config", "--get", "user.email"], check=False, timeout=10).output.strip()
    if mail:
        return email.utils.formataddr((name, mail)), ""
    return "kpipe <kpipe@localhost>", ("reply.eml is From: kpipe <kpipe@localhost>; set report.reply_from in "
                                       "pipeline.yaml (or KPIPE_FROM) to your address before sending")

def _wrap(text: str) -> str:
    """Prose paragraphs wrapped at 72 columns; indented or preformatted lines (logs, tables) kept as they
    are, only cut below SMTP's line limit."""
    out: list[str] = []
    for para in text.split("\n\n"):
        lines = para.split("\n")
        if len(lines) == 1 and not para.startswith((" ", "\t")) and len(para) > WIDTH:
            out.append("\n".join(textwrap.wrap(para, WIDTH, break_on_hyphens=False, break_long_words=False)))
        else:
            out.append("\n".join(line if len(line.encode()) <= MAX_LINE else line[:MAX_LINE // 4] + " [...]"
                                  for line in lines))
    return "\n\n".join(out)

def write_reply(series: Series, summary: str, first_paragraph: str, report_link: str, dest: Path,
                reproduce: str = "", run_id: str = "", sender_setting: str = "",
                passed: bool = False, details: str = "", tags: str = "") -> tuple[Path, list[str]]:
    """reply.eml, threaded under the series (In-Reply-To/References), LF line endings, 72 columns; never
    sent.  `passed`: the series was measured and found no regression, so a Tested-by: trailer is added.
    Returns the file and the warnings the user should see before sending it."""
    warnings: list[str] = []
    sender, why = reply_sender(sender_setting)
    if why:
        warnings.append(why)
    if "://" not in report_link:
        warnings.append(f"the report link is a local path ({report_link}); set report.base_url to where "
                        f"reports/ is published")
    msg = EmailMessage(policy=email.policy.default.clone(linesep="\n", max_line_length=MAX_LINE))
    msg["From"] = sender
    subject = _clip_words(series.subject)
    msg["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    if series.sender:
        msg["To"] = series.sender
    cc = list(dict.fromkeys(a for a in series.to + series.cc if a))
    if len(cc) > MAX_CC:
        warnings.append(f"the series was addressed to {len(cc)} people; reply.eml copies only the first {MAX_CC} "
                        f"(add others by hand if they should get it)")
        cc = cc[:MAX_CC]
    if cc:
        msg["Cc"] = ", ".join(cc)
    if series.message_id:
        msg["In-Reply-To"] = series.message_id
        msg["References"] = series.references
    msg["Message-ID"] = email.utils.make_msgid(domain="kpipe.localhost")
    msg["Date"] = email.utils.formatdate(localtime=False)
    name = email.utils.parseaddr(series.sender)[0] or email.utils.parseaddr(series.sender)[1]
    quote = f"On {series.date}, {name} wrote:" if series.date and name else (f"{name} wrote:" if name else "")
    body = (f"{quote}\n> {series.subject}\n\n" if quote else "") + _wrap(first_paragraph) + "\n\n"
    if details:
        body += details.rstrip("\n") + "\n\n"
    body += summary.rstrip("\n") + "\n"
    if report_link not in summary:
        body += f"\nReport: {report_link}\n"
    if reproduce:
        body += "\n" + reproduce.rstrip("\n") + "\n"
    if tags:
        body += "\n" + tags.rstrip("\n") + "\n"
    ours = (f"Tested-by: {sender}",) if passed else ()
    if passed:
        body += f"\nTested-by: {sender}\n"
    body += f"\n-- \nkpipe{' run ' + run_id if run_id else ''}\n"
    # Whatever a build, a console or a subject put into the body: no escape, and no trailer but ours.
    body = defuse_trailers(body, ours)
    # Plain text as lists expect it: no quoted-printable soft breaks.
    msg.set_content(body, cte="7bit" if body.isascii() else "8bit")
    dest.write_bytes(msg.as_bytes())
    return dest, warnings
