"""Which images registry events cover, and so are polled only at the backstop (pure).

An image is covered when its registry is served with ``api: google`` (GCR and
Artifact Registry, which publish every push to their project's ``gcr`` topic)
and its project, the first segment of its path (``eu.gcr.io/P/app``,
``europe-docker.pkg.dev/P/repo/app``), has a subscription or has sent an event.
Every other image keeps the shard's interval. Covered images are spread over
the sweeps of one backstop: each is checked in one sweep of every
``backstop / interval``, chosen by a stable hash of its name and the wall clock,
so every replica agrees and the registry sees an even rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from watcher.cluster.shards import blake2b_64
from watcher.config import Config
from watcher.references import ImageName


def project(image: ImageName) -> str:
    """The Google project an image on GCR or Artifact Registry belongs to."""
    return image.path.split("/", 1)[0]


def covered(config: Config, image: ImageName, projects: Iterable[str] = ()) -> bool:
    """Whether events announce the pushes of ``image`` (its checks then run at the backstop).

    ``projects``: projects seen in events besides those of the subscriptions.
    """
    if not config.events.subscriptions:
        return False
    if config.registry_for(image.host).api != "google":
        return False
    name = project(image)
    return name in config.events.projects or name in projects


def period(config: Config) -> int:
    """Sweeps per backstop: a covered image is checked in one sweep of this many (>= 1)."""
    return max(1, math.floor(config.events.backstop / config.interval + 1e-9))


def due(image: ImageName, sweep: int, sweeps: int) -> bool:
    """Whether a covered image is checked in sweep number ``sweep`` (of ``sweeps`` per backstop)."""
    # Salted: the shard is the name's own hash, and would correlate with it.
    return (blake2b_64(f"backstop {image}") + sweep) % sweeps == 0
