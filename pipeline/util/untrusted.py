"""untrusted: text that came from a patch, a build or a test host, made safe to show and to mail.

Build logs, console excerpts, workload output, patch subjects and author names are written by whoever
sent the series. Shown on a terminal they must not carry escape sequences (an OSC 52 clipboard write, a
title, a cleared line); put into a reply they must not start a line that a patch tool would collect as a
trailer (`Reviewed-by:`, `Tested-by:`, `Link:` ...) or read as a header.
"""
from __future__ import annotations

import re

# C0 controls but \t and \n, DEL, C1 controls, and the bidirectional overrides and isolates that reorder
# what a reader sees (the "Trojan Source" characters).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# A line b4, patchwork or git interpret-trailers would collect as a trailer: "Word-by:", "Link:", "Fixes:" ...
TRAILER_LINE = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9-]*-by|Cc|Fixes|Link|Closes|Message-I[Dd]|Change-Id|Bug|"
                          r"References|In-Reply-To|Patchwork-[A-Za-z-]+|Signed-off-by)\s*:", re.I)
QUOTE = "    "


def clean(text: str) -> str:
    """`text` without control characters (tabs and newlines kept, carriage returns dropped)."""
    return _CONTROLS.sub("", text.replace("\r\n", "\n"))


def one_line(text: str, limit: int = 200) -> str:
    """A single clean line, at most `limit` characters: for terminal progress lines and table cells."""
    line = " ".join(clean(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def quote_block(text: str, limit_lines: int = 60) -> str:
    """An excerpt for a reply or a text summary: clean, its last `limit_lines` lines, every line indented
    (so none can start as a trailer or a header) and cut below the mail line limit."""
    lines = clean(text).strip("\n").split("\n")[-limit_lines:]
    return "\n".join(QUOTE + (line if len(line) <= 400 else line[:400] + " [...]") for line in lines if line.strip()
                     or line == "")


def defuse_trailers(body: str, ours: tuple[str, ...]) -> str:
    """The last gate before a reply is written: every line that reads as a trailer or header and is not one
    of `ours` (exact lines the pipeline wrote) is indented, and control characters are gone."""
    out = []
    for line in clean(body).split("\n"):
        if line in ours or not TRAILER_LINE.match(line) or line.startswith(QUOTE):
            out.append(line)
        else:
            out.append(QUOTE + line)
    return "\n".join(out)
