"""Where verification keys come from: a JWKS document held in memory, in a file, or at a URL.

Each source hands out the raw JWKS document; the verifier parses it. A URL is fetched with
httpx (no redirects, short timeout) and cached, rather than through PyJWT's client, because
the verifier needs the raw JWK members to decide which algorithms each key may verify.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx

from keyturn.identity.errors import InvalidToken


class JwksSource(Protocol):
    """Anything that can hand out the current JWKS document."""

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The current document; ``refresh`` asks for a re-read because a kid was unknown."""
        ...


class StaticJwks:
    """A JWKS document fixed at start-up, e.g. the local dev key's."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = document

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The document given at construction."""
        return self._document


class JwksFile:
    """A JWKS JSON file, re-read whenever it changes on disk (key rotation without restart)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._document: Mapping[str, Any] = {}
        self._lock = threading.Lock()

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The file's document, read again if its size, mtime or inode changed."""
        with self._lock:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if refresh or stamp != self._stamp:
                    self._document = json.loads(self.path.read_text(encoding="utf-8"))
                    self._stamp = stamp
            except (OSError, ValueError) as exc:
                raise InvalidToken(
                    "jwks_unavailable",
                    f"cannot read the JWKS file {self.path} ({exc}); fix the file or the "
                    "configured JWKS path; every token is refused until then",
                ) from exc
            return self._document


class JwksUrl:
    """A JWKS served over HTTP(S), cached for ``cache_s`` seconds.

    An unknown kid forces a re-fetch at most once per ``refresh_cooldown_s``, so a rotated
    key is picked up quickly while a flood of forged kids cannot hammer the provider. When a
    fetch fails every token is refused (fail closed) until a fetch succeeds; retries wait
    ``retry_after_failure_s`` so an outage does not queue every request behind a timeout.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_s: float = 300.0,
        refresh_cooldown_s: float = 30.0,
        timeout_s: float = 5.0,
        retry_after_failure_s: float = 5.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if urlparse(url).scheme not in ("http", "https"):
            raise ValueError(f"JWKS URL must be http:// or https://, got {url!r}")
        self.url = url
        self._cache_s = cache_s
        self._refresh_cooldown_s = refresh_cooldown_s
        self._retry_after_failure_s = retry_after_failure_s
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._clock = clock
        self._document: Mapping[str, Any] | None = None
        self._fetched_at = 0.0
        self._failure: tuple[float, InvalidToken] | None = None
        self._lock = threading.Lock()

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The cached document, fetched again when stale or when a refresh is due."""
        with self._lock:
            age = self._clock() - self._fetched_at
            cached = self._document if age < self._cache_s else None
            if cached is not None and (not refresh or age < self._refresh_cooldown_s):
                return cached
            try:
                self._document = self._fetch_unless_failing()
            except InvalidToken:
                if cached is not None:  # only the kid refresh failed; the cached keys are still current
                    return cached
                raise
            self._fetched_at = self._clock()
            return self._document

    def _fetch_unless_failing(self) -> Mapping[str, Any]:
        if self._failure is not None:
            failed_at, error = self._failure
            if self._clock() - failed_at < self._retry_after_failure_s:
                raise InvalidToken(error.code, error.message)
        try:
            document = self._fetch()
        except InvalidToken as error:
            self._failure = (self._clock(), error)
            raise
        self._failure = None
        return document

    def _fetch(self) -> Mapping[str, Any]:
        try:
            response = self._client.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise InvalidToken(
                "jwks_unavailable",
                f"cannot fetch the JWKS from {self.url} ({exc}); every token is refused "
                "until the identity provider answers",
            ) from exc
