"""Google Container Registry / Artifact Registry: the tags/list extension and ADC tokens.

One ``tags/list`` of a Google registry answers every question about an image:
its ``manifest`` map gives each digest's tags and upload time. This module
turns those pages into :class:`~watcher.strategies.ImageFacts`, and supplies
the OAuth access token that Google's registries take as a password.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from watcher.errors import CredentialsError, ExtensionError
from watcher.references import is_digest, is_tag
from watcher.registry.manifests import (
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
    MANIFEST_TYPES,
)
from watcher.strategies import ImageFacts
from watcher.tuning import FAILURE_TTL, REFRESH_MARGIN, REFRESH_SHARE

# Media types a Google registry lists for images we can follow. Anything else
# (attestations, Helm charts, signatures) is not an image a block can run.
IMAGE_MEDIA_TYPES = frozenset({*MANIFEST_TYPES, DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED})
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def _millis(value: Any, where: str) -> float:
    # GCR sends times as strings, Artifact Registry as integers: read both.
    if isinstance(value, bool):
        raise ExtensionError(f"{where}: time is not a number: {value!r}")
    if isinstance(value, int):
        return value / 1000.0
    if isinstance(value, str) and value.isdigit():
        return int(value) / 1000.0
    raise ExtensionError(f"{where}: time is not a number: {value!r}")


def facts_from_pages(pages: Iterable[dict[str, Any]]) -> tuple[ImageFacts, list[str]]:
    """Merge the pages of one image's tags/list into facts; also return what was skipped.

    A page without a ``manifest`` map, or a map that is not a mapping of
    digests to entries, makes the whole listing unusable (ExtensionError):
    half a map would make ``newest`` pick from half the builds. A single
    entry with an unknown media type or a malformed tag is skipped with a
    reason instead.
    """
    tags: dict[str, str] = {}
    times: dict[str, float] = {}
    listed: set[str] = set()
    unfollowable: set[str] = set()
    skipped: list[str] = []
    for index, page in enumerate(pages):
        manifest = page.get("manifest")
        if not isinstance(manifest, dict):
            raise ExtensionError(f"page {index + 1}: no Google 'manifest' map in tags/list")
        page_tags = page.get("tags") or ()
        if not isinstance(page_tags, list | tuple):
            raise ExtensionError(f"page {index + 1}: 'tags' is not a list")
        for tag in page_tags:
            if is_tag(tag):
                listed.add(tag)
        for digest, entry in manifest.items():
            if not is_digest(digest):
                skipped.append(f"{digest!r}: not a sha256 digest")
                continue
            if not isinstance(entry, dict):
                raise ExtensionError(f"page {index + 1}: manifest entry {digest} is not a mapping")
            media_type = entry.get("mediaType")
            entry_tags = entry.get("tag", [])
            if not isinstance(entry_tags, list):
                raise ExtensionError(f"page {index + 1}: tags of {digest} are not a list")
            # Not a string (a list, a map) is not a media type we know: frozenset
            # membership of an unhashable value would raise TypeError instead.
            if media_type is not None and (
                not isinstance(media_type, str) or media_type not in IMAGE_MEDIA_TYPES
            ):
                skipped.append(f"{digest}: media type {media_type!r} is not an image")
                unfollowable.update(t for t in entry_tags if isinstance(t, str))
                continue
            uploaded = entry.get("timeUploadedMs", entry.get("timeCreatedMs"))
            if uploaded is not None:
                times[digest] = _millis(uploaded, f"page {index + 1}: {digest}")
            for tag in entry_tags:
                if not is_tag(tag):
                    skipped.append(f"{tag!r}: tag breaks the OCI grammar")
                    continue
                tags[tag] = digest
                listed.add(tag)
    # A tag whose digest is not an image must not be picked by a tag strategy.
    listed -= unfollowable - set(tags)
    return ImageFacts(tags=tags, listed=frozenset(listed), times=times), skipped


class GoogleTokenSource:
    """OAuth access tokens from Application Default Credentials, refreshed before expiry.

    ADC finds Workload Identity / the metadata server (``GCE_METADATA_HOST``
    moves it), or a key file named by GOOGLE_APPLICATION_CREDENTIALS. The
    refresh is blocking HTTP in google-auth, so it runs in a thread; one
    refresh at a time. ``refresh_margin``: refresh this many seconds before
    expiry; None: :data:`REFRESH_MARGIN`, at most :data:`REFRESH_SHARE` of the
    token's life as it was handed out.
    """

    def __init__(
        self, *, refresh_margin: float | None = None, failure_ttl: float = FAILURE_TTL
    ) -> None:
        self._credentials: Any = None
        self._lock = asyncio.Lock()
        self._margin = refresh_margin
        self._lifetime: float | None = None
        self._failure: tuple[float, CredentialsError] | None = None
        self.failure_ttl = failure_ttl
        self.refreshes = 0

    def __repr__(self) -> str:
        return "GoogleTokenSource(<application default credentials>)"

    def _refresh(self) -> None:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests

        try:
            if self._credentials is None:
                self._credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM])
            self._credentials.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.GoogleAuthError as exc:
            # A RegistryClient knows only its own errors: anything else would end
            # the whole cycle instead of skipping this registry's images. The
            # message is google-auth's (URLs and statuses, never a token), cut
            # short because a metadata error can carry a whole response body.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CredentialsError(
                f"Google Application Default Credentials: {type(exc).__name__}: {first[:200]}"
            ) from None
        remaining = self._remaining()
        self._lifetime = remaining
        self.refreshes += 1

    def _remaining(self) -> float | None:
        expiry = self._credentials.expiry if self._credentials is not None else None
        if expiry is None:
            return None
        # google-auth keeps expiry as a naive UTC datetime.
        return float(expiry.replace(tzinfo=dt.UTC).timestamp() - time.time())

    def margin(self) -> float:
        """Seconds before expiry at which the access token is replaced."""
        if self._margin is not None:
            return self._margin
        if self._lifetime is None:
            return REFRESH_MARGIN
        return min(REFRESH_MARGIN, REFRESH_SHARE * max(0.0, self._lifetime))

    def _fresh(self) -> bool:
        creds = self._credentials
        if creds is None or not creds.token:
            return False
        remaining = self._remaining()
        return remaining is None or remaining > self.margin()

    async def password(self) -> str:
        async with self._lock:
            if not self._fresh():
                if self._failure is not None:
                    failed_at, error = self._failure
                    if time.monotonic() - failed_at < self.failure_ttl:
                        raise CredentialsError(str(error))
                try:
                    await asyncio.to_thread(self._refresh)
                except CredentialsError as exc:
                    self._failure = (time.monotonic(), exc)
                    raise
                self._failure = None
            return str(self._credentials.token)
