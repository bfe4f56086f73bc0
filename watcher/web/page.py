"""The status page: every environment's blocks as plain, server-rendered HTML.

No script, no external asset (the style sheet is inline), everything escaped: it
reads the same in any browser, a text browser included, and from a cluster with
no way out. One table per environment, blocks as rows (state, value, age, and why
a block is not following), the budgets' use against their caps above them.
``?branch=GLOB`` and ``?state=STATE`` narrow it down; thousands of blocks render in
milliseconds (one pass, one join). Links are relative, so the page also works
behind a proxy that serves it under a path prefix.
"""

from __future__ import annotations

import fnmatch
from html import escape

from watcher.steer.status import STATUS_STATES, Environment, Row, Status, short, when

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}code{font-size:12px}
.following{color:#1a7f37}.promoted{color:#1a7f37}.pinned{color:#0550ae}.held{color:#9a6700}
.off{color:#666}.failing{color:#cf222e;font-weight:bold}
.counts span{margin-right:1.2em}.muted{color:#666}
nav a{margin-right:1em}
"""


def render(status: Status, *, branch: str | None = None, state: str | None = None) -> str:
    """The whole page; ``branch`` (a glob) and ``state`` keep only what matches."""
    envs = [
        env
        for env in status.environments
        if branch is None or fnmatch.fnmatchcase(env.branch, branch)
    ]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width'>",
        "<title>image-tag-watcher status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>image-tag-watcher</h1>",
        f"<p class=muted>Generated {escape(when(status.generated))} "
        f"from {escape(status.source)}.</p>",
    ]
    parts.extend(f"<p class=muted>{escape(note)}</p>" for note in status.notes)
    parts.append(_counts(status))
    parts.append(_budgets(status))
    if branch is not None or state is not None:
        shown = " and ".join(
            text
            for text in (
                f"branches {branch}" if branch is not None else "",
                f"state {state}" if state is not None else "",
            )
            if text
        )
        parts.append(f"<p>Showing {escape(shown)}. <a href='?'>Show everything</a></p>")
    if len(envs) > 1:
        links = "".join(
            f"<a href='#{_anchor(env.branch)}'>{escape(env.branch)}</a>" for env in envs
        )
        parts.append(f"<nav>{links}</nav>")
    for env in envs:
        parts.append(_environment(env, status.generated, state))
    if not envs:
        parts.append("<p>No environment branch matches.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _counts(status: Status) -> str:
    counts = status.counts()
    items = "".join(
        f"<span class={name}><a href='?state={name}'>{name}</a>: {counts.get(name, 0)}</span>"
        for name in STATUS_STATES
    )
    return f"<p class=counts>{items}</p>"


def _budgets(status: Status) -> str:
    if not status.budgets:
        return ""
    rows = "".join(
        f"<tr><td>{escape(b.name)}</td><td>{b.used} / {b.cap}</td>"
        f"<td><meter min=0 max={max(b.cap, 1)} value={b.used}></meter> "
        f"{100 * b.used / max(b.cap, 1):.0f}%</td><td>{_duration(b.per)}</td></tr>"
        for b in status.budgets
    )
    return (
        "<h2>Request budgets</h2><table><tr><th>budget</th><th>requests in window / cap"
        f"</th><th>use</th><th>window</th></tr>{rows}</table>"
    )


def _environment(env: Environment, now: float, state: str | None) -> str:
    rows = [row for row in env.rows if state is None or row.state == state]
    head = (
        f"<h2 id='{_anchor(env.branch)}'>{escape(env.branch)} "
        f"<code class=muted>{escape(env.commit[:12])}</code></h2>"
    )
    body = [head]
    if env.problems and state in (None, "failing"):
        items = "".join(
            f"<li class=failing>{escape(p.file)}:{p.line}: {escape(p.message)}</li>"
            for p in env.problems
        )
        body.append(f"<ul>{items}</ul>")
    if not rows:
        body.append("<p class=muted>No blocks.</p>")
        return "".join(body)
    body.append(
        "<table><tr><th>block</th><th>image</th><th>strategy</th><th>value</th>"
        "<th>state</th><th>changed</th><th>why</th></tr>"
    )
    body.extend(_row(row, now) for row in rows)
    body.append("</table>")
    return "".join(body)


def _row(row: Row, now: float) -> str:
    tag = f":{row.tag}" if row.tag else ""
    changed = "<td class=muted>-</td>"
    if row.changed is not None:
        changed = (
            f"<td title='{escape(when(row.changed.time))} {escape(row.changed.commit[:12])}'>"
            f"{_age(now - row.changed.time)} ago<br><span class=muted>"
            f"{escape(row.changed.author)}</span></td>"
        )
    return (
        f"<tr><td><code>{escape(row.block)}</code></td>"
        f"<td>{escape(row.image)}{escape(tag)}</td><td>{escape(row.strategy)}</td>"
        f"<td>{_value(row)}</td><td class={row.state}>{row.state}</td>{changed}"
        f"<td>{escape(row.reason)}</td></tr>"
    )


def _value(row: Row) -> str:
    if not row.value:
        return "<span class=muted>(none)</span>"
    shown = short(row.value) + ("…" if short(row.value) != row.value else "")
    field = f"{escape(row.field)} " if row.field else ""
    code = f"<code title='{escape(row.value)}'>{escape(shown)}</code>"
    return f"<span class=muted>{field}</span>{code}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _duration(seconds: float) -> str:
    return _age(seconds) if seconds % 60 == 0 or seconds < 60 else f"{seconds:g}s"


def _anchor(branch: str) -> str:
    return "env-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in branch)
