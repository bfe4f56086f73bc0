"""What a message on the ``gcr`` topic says, read without trusting it (pure).

Google's registries publish every change of a repository as JSON in the
message's data: ``action`` (``INSERT`` or ``DELETE``), and ``digest`` and/or
``tag``, each a full reference (``eu.gcr.io/p/app@sha256:...``,
``eu.gcr.io/p/app:master``); ``tag`` is absent for an untagged push, and a
``DELETE`` may carry only ``tag``. Every action is read the same way, as a
hint that the image changed: the check that follows asks the registry what
is true now, so a duplicate, a message out of order or a ``DELETE`` can only
cost a look-up, never write a stale value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from watcher.errors import InvalidReference
from watcher.references import ImageName, parse_reference

Action = Literal["INSERT", "DELETE"]
ACTIONS: tuple[Action, ...] = ("INSERT", "DELETE")


@dataclass(frozen=True)
class Hint:
    """A registry event: ``image`` (canonical) may have changed."""

    image: ImageName
    action: Action
    tag: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class Malformed:
    """A message that is not a registry event we can read, and why (for the log)."""

    reason: str


def parse(data: bytes) -> Hint | Malformed:
    """The hint a message's data carries, or why it carries none."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Malformed("data is not JSON")
    if not isinstance(body, dict):
        return Malformed("data is not a JSON object")
    action = body.get("action")
    if action not in ACTIONS:
        return Malformed(f"action is {action!r}, not INSERT or DELETE")
    names: set[ImageName] = set()
    tag: str | None = None
    digest: str | None = None
    for key in ("digest", "tag"):
        text = body.get(key)
        if text is None:
            continue
        if not isinstance(text, str):
            return Malformed(f"{key} is not a string")
        try:
            reference = parse_reference(text)
        except InvalidReference as exc:
            return Malformed(f"{key}: {exc}")
        if key == "digest" and reference.digest is None:
            return Malformed("digest names no digest")
        if key == "tag" and reference.tag is None:
            return Malformed("tag names no tag")
        names.add(reference.name)
        tag = reference.tag if key == "tag" else tag
        digest = reference.digest if key == "digest" else digest
    if not names:
        return Malformed("neither digest nor tag")
    if len(names) > 1:
        return Malformed("digest and tag name different images")
    return Hint(names.pop(), action, tag, digest)


def project_of(subscription: str) -> str:
    """``projects/P/subscriptions/S`` -> ``P``."""
    return subscription.split("/")[1]
