"""Colour, status symbols, ages and the tree table every view prints. Pure: text in, text out.

Colour is decided once, by the caller (``wants_colour``): on a terminal, unless NO_COLOR is set
(https://no-color.org); a pipe or a file gets plain text, so what a script reads never holds escapes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from noria import contracts as ct
from noria.conditions import get_condition
from noria.deployment.observation import parse_time  # the operator's reading of a timestamp

_CODES = {"green": "32", "yellow": "33", "red": "31", "blue": "34", "grey": "90", "bold": "1"}

# Phase or stage -> (symbol, colour). The symbols are kubectl argo rollouts' where they mean the same.
# Stages come from noria.contracts, so a stage renamed there cannot fall back to the plain, unknown look.
_STATUS = {
    "Healthy": ("✔", "green"), "Ready": ("✔", "green"), ct.PRODUCTION: ("✔", "green"),
    "Successful": ("✔", "green"), "Succeeded": ("✔", "green"), "Running": ("✔", "green"),
    ct.APPROVED: ("✔", "green"), "Passed": ("✔", "green"),
    "Progressing": ("◌", "yellow"), "Training": ("◌", "yellow"), "Pending": ("◌", "yellow"),
    ct.CANARY: ("◌", "yellow"), ct.SHADOW: ("◌", "yellow"), ct.PREVIEW: ("◌", "yellow"), "Waiting": ("◌", "yellow"),
    ct.CANDIDATE: ("◌", "yellow"), ct.REGISTERED: ("◌", "yellow"), "NotReady": ("◌", "yellow"),
    "Paused": ("॥", "grey"), ct.RETIRED: ("•", "grey"), "Inconclusive": ("?", "yellow"),
    "Degraded": ("✖", "red"), "Failed": ("✖", "red"), ct.REJECTED: ("✖", "red"), "Error": ("⚠", "red"),
    "Above": ("✖", "red"), "Below": ("✔", "green"),
}


@dataclass(frozen=True)
class Style:
    colour: bool = False

    def paint(self, text: str, colour: str) -> str:
        return f"\033[{_CODES[colour]}m{text}\033[0m" if self.colour and text else text

    def status(self, word: str | None) -> str:
        """``✔ Healthy`` (green on a terminal); an unknown word is printed as it is."""
        if not word:
            return ""
        symbol, colour = _STATUS.get(word, ("", "bold"))
        return self.paint(f"{symbol} {word}".strip(), colour)


def wants_colour(is_tty: bool, environ: Mapping[str, str]) -> bool:
    return is_tty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def human_seconds(seconds: float) -> str:
    """kubectl's short ages: 45s, 3m12s, 2h5m, 3d4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m" if (s % 3600) // 60 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h" if (s % 86400) // 3600 else f"{s // 86400}d"


def age(timestamp: str | None, now: dt.datetime) -> str:
    moment = parse_time(timestamp)
    return human_seconds((now - moment).total_seconds()) if moment else ""


def clock(timestamp: str | None) -> str:
    """``2026-12-02 08:01:02`` (UTC, as the API stores it)."""
    moment = parse_time(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return get_condition((obj.get("status") or {}).get("conditions"), type_) or {}


def fields(rows: list[tuple[str, str]], style: Style, indent: str = "") -> list[str]:
    """``Name:        value`` lines with the values aligned, as ``kubectl describe`` prints them."""
    rows = [(k, v) for k, v in rows if v not in (None, "")]
    width = max((len(k) for k, _ in rows), default=0) + 2
    return [f"{indent}{style.paint((k + ':').ljust(width), 'bold')}{v}" for k, v in rows]


@dataclass
class Node:
    """One row of a tree: ``name`` drawn with its branch, then kind, status, age and info columns."""

    name: str
    kind: str
    status: str = ""
    age: str = ""
    info: str = ""
    icon: str = ""
    children: list[Node] = field(default_factory=list)


def tree(root: Node, style: Style) -> list[str]:
    """The tree as ``kubectl argo rollouts get`` draws it: NAME KIND STATUS AGE INFO, branches drawn
    with box characters. Columns are aligned on the plain text (escapes do not count)."""
    rows: list[tuple[str, Node]] = []

    def walk(node: Node, prefix: str, branch: str) -> None:
        rows.append((prefix + branch + (node.icon + " " if node.icon else "") + node.name, node))
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            walk(child, prefix + ("" if not branch else ("   " if branch.startswith("└") else "│  ")),
                 "└──" if last else "├──")

    walk(root, "", "")
    name_w = max(len("NAME"), *(len(r[0]) for r in rows)) + 2
    kind_w = max(len("KIND"), *(len(n.kind) for _, n in rows)) + 2
    status_w = max(len("STATUS"), *(len(Style().status(n.status)) for _, n in rows)) + 2
    age_w = max(len("AGE"), *(len(n.age) for _, n in rows)) + 2
    out = [style.paint("NAME".ljust(name_w) + "KIND".ljust(kind_w) + "STATUS".ljust(status_w)
                       + "AGE".ljust(age_w) + "INFO", "grey")]
    for text, node in rows:
        plain_status = Style().status(node.status)
        status = style.status(node.status) + " " * (status_w - len(plain_status))
        out.append((text.ljust(name_w) + node.kind.ljust(kind_w) + status + node.age.ljust(age_w)
                    + node.info).rstrip())
    return out
