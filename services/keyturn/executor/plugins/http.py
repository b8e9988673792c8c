"""The ``http`` plugin: one call to an allow-listed HTTPS URL, with a token minted for that call.

For each command (``http.request``: the URL is ``resource``; ``parameters.method``, optional
``parameters.headers`` and JSON ``parameters.body``):

- the URL must be ``https`` on a host in ``KEYTURN_HTTP_ALLOWED_HOSTS`` (the policy has its
  own allow-list; both must agree), with no credentials in it;
- the executor mints a JWT signed with its own key (ES256, ``<keys>/executor/``, public half
  published as ``jwks.json`` beside it): ``iss`` ``keyturn-executor``, ``sub``
  ``service:keyturn-executor`` acting for the requester's chain (``act``), ``aud`` the
  target's origin, ``exp`` now + the policy's credential TTL, and the call it is for
  (``htm`` method, ``htu`` URL, ``keyturn_action_id``). A target verifies all of these with
  the JWKS, so the token is useless for any other call, target or time;
- the caller may not set ``Authorization`` (the minted token goes there) or ``Host``;
- redirects are not followed (the token is for this URL only).

A refused connection or a connect timeout ends ``failed`` (nothing was sent). No answer in
time ends ``failed`` for GET/HEAD/OPTIONS and ``outcome_unknown`` for writes, which may have
acted. An answer of 300 or more ends ``failed`` with the status.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.identity import SigningKey, issue_token, load_or_create_signing_key

TOKEN_ISSUER = "keyturn-executor"
TOKEN_SUBJECT = "service:keyturn-executor"
KEY_DIRECTORY = "executor"
JWKS_FILE = "jwks.json"
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORBIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "host"})
MAX_BODY_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 64 * 1024


def executor_key_directory(keys_dir: Path) -> Path:
    """Where the executor keeps its signing key and publishes its JWKS, under the keys directory."""
    return keys_dir / KEY_DIRECTORY


def publish_jwks(directory: Path, key: SigningKey) -> Path:
    """Write the public JWKS targets verify minted tokens with (atomically, world-readable)."""
    path = directory / JWKS_FILE
    staging = directory / f".{JWKS_FILE}.{os.getpid()}.tmp"
    staging.write_text(json.dumps(key.jwks(), indent=2))
    staging.chmod(0o644)
    staging.replace(path)
    return path


def parse_connect_to(text: str) -> dict[str, tuple[str, int]]:
    """``host=address:port,…`` → {host: (address, port)}; raises ValueError saying what is wrong."""
    routes: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, target = item.partition("=")
        address, colon, port = target.rpartition(":")
        if not sep or not colon or not host.strip() or not address or not port.isdigit():
            raise ValueError(f"KEYTURN_HTTP_CONNECT_TO entry {item!r} must look like host=address:port")
        routes[host.strip().lower()] = (address.strip("[]"), int(port))
    return routes


class HttpPlugin:
    name = "http"

    def __init__(
        self,
        signing_key: SigningKey,
        *,
        allowed_hosts: frozenset[str],
        connect_to: dict[str, tuple[str, int]] | None = None,
        ca_file: str = "",
        timeout_s: float = 10.0,
        credential_observer: Callable[[str], None] | None = None,
    ) -> None:
        self.signing_key = signing_key
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.connect_to = dict(connect_to or {})
        self.timeout_s = timeout_s
        self.tls = ssl.create_default_context()
        if ca_file:
            self.tls.load_verify_locations(cafile=ca_file)
        # Tests pass an observer to learn every minted token and prove it leaks nowhere.
        self.credential_observer = credential_observer

    @classmethod
    def with_key_in(cls, keys_dir: Path, **options: Any) -> HttpPlugin:
        """A plugin signing with the executor's key under ``keys_dir`` (made on first run), whose
        JWKS it publishes there for targets to verify; ``options`` as for the constructor."""
        directory = executor_key_directory(keys_dir)
        key = load_or_create_signing_key(directory)
        publish_jwks(directory, key)
        return cls(key, **options)

    async def execute(self, command: Command) -> Any:
        url, method, headers, body = self._request_parts(command)
        return await self._send(command, url, method, headers, json=body)

    def deliverable(self, destination: Any) -> httpx.URL:
        """``destination`` as a URL this plugin may call (https, allow-listed, no credentials in
        it), or ``ExecutionFailed`` saying why not: before anything else of a command runs."""
        return self._checked_url(destination, "the destination")

    async def put_file(self, command: Command, url: httpx.URL, path: Path, content_type: str) -> dict[str, Any]:
        """PUT the file at ``path`` to ``url`` with a token minted for this one call (as
        ``execute`` calls), for an export delivered where it was approved to go."""
        headers = {"Content-Type": content_type}
        with path.open("rb") as file:
            return await self._send(command, url, "PUT", headers, content=file.read())

    async def _send(
        self,
        command: Command,
        url: httpx.URL,
        method: str,
        headers: dict[str, str],
        *,
        json: Any = None,
        content: bytes | None = None,
    ) -> dict[str, Any]:
        host = url.host
        token = self._mint(command, url, method)
        headers["Authorization"] = f"Bearer {token}"
        target, extensions = url, {}
        if host in self.connect_to:
            address, port = self.connect_to[host]
            target = url.copy_with(host=address, port=port)
            headers["Host"] = url.netloc.decode("ascii")
            extensions["sni_hostname"] = host  # TLS still checks the certificate for the real host
        writes = method in WRITING_METHODS
        try:
            async with httpx.AsyncClient(
                verify=self.tls, timeout=self.timeout_s, follow_redirects=False, trust_env=False
            ) as client:
                request = client.build_request(
                    method, target, headers=headers, json=json, content=content, extensions=extensions
                )
                response = await client.send(request, stream=True)
                try:
                    content, cut = await _read_capped(response)
                finally:
                    await response.aclose()
        except httpx.ConnectTimeout:
            raise ExecutionFailed(f"could not connect to {host} within {self.timeout_s:g}s; nothing was sent") from None
        except httpx.ConnectError as exc:
            raise ExecutionFailed(f"cannot connect to {host}: {_reason(exc)}; nothing was sent") from None
        except httpx.TimeoutException:
            if writes:
                raise OutcomeUnknown(
                    f"{method} {url} was sent but {host} did not answer within {self.timeout_s:g}s; it may have acted"
                ) from None
            raise ExecutionFailed(f"{host} did not answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            if writes:
                raise OutcomeUnknown(
                    f"{method} {url} failed after it was sent ({_reason(exc)}); it may have acted"
                ) from None
            raise ExecutionFailed(f"{method} {url} failed: {_reason(exc)}") from None
        result = {
            "status": response.status_code,
            "content_type": response.headers.get("content-type", ""),
            "body": _body(content, response.headers.get("content-type", "")),
        }
        if cut:
            result["body_truncated"] = True
        if response.status_code >= 300:
            detail = (
                " (redirects are not followed: the token is for this URL only)" if response.status_code < 400 else ""
            )
            snippet = content[:300].decode("utf-8", "replace").strip()
            raise ExecutionFailed(
                f"{host} answered {response.status_code} {response.reason_phrase}{detail}"
                + (f": {snippet}" if snippet else "")
            )
        return result

    def _checked_url(self, text: Any, what: str) -> httpx.URL:
        try:
            url = httpx.URL(text)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ExecutionFailed(f"{what} {text!r} is not a URL: {exc}") from None
        if url.scheme != "https":
            raise ExecutionFailed(f"the executor calls https URLs only, not {url.scheme or 'a relative URL'}")
        if url.userinfo:
            raise ExecutionFailed("the URL carries credentials; the executor mints the only credential a call gets")
        # a host on the list is its https origin (port 443); another port only where host:port is listed
        origin = url.host if url.port in (None, 443) else f"{url.host}:{url.port}"
        if origin not in self.allowed_hosts:
            raise ExecutionFailed(
                f"host {origin!r} is not in KEYTURN_HTTP_ALLOWED_HOSTS; the executor calls only allow-listed hosts"
            )
        return url

    def _request_parts(self, command: Command) -> tuple[httpx.URL, str, dict[str, str], Any]:
        url = self._checked_url(command.resource, "resource")
        method = command.parameters.get("method")
        method = method.upper() if isinstance(method, str) else ""
        if method not in READING_METHODS | WRITING_METHODS:
            raise ExecutionFailed(
                f"parameters.method must be one of {', '.join(sorted(READING_METHODS | WRITING_METHODS))}"
            )
        given = command.parameters.get("headers") or {}
        if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            raise ExecutionFailed("parameters.headers must be an object of strings")
        forbidden = sorted(k for k in given if k.lower() in FORBIDDEN_HEADERS)
        if forbidden:
            raise ExecutionFailed(
                # the names end the sentence: "Authorization: the …" reads to masking as a header and its value
                f"the executor authenticates every call with a token minted for it, so parameters.headers "
                f"may not set {', '.join(forbidden)}"
            )
        return url, method, dict(given), command.parameters.get("body")

    def _mint(self, command: Command, url: httpx.URL, method: str) -> str:
        origin = f"https://{url.netloc.decode('ascii')}"
        chain = (command.requester.id, *command.requester.chain) if command.requester else ()
        token = issue_token(
            self.signing_key,
            subject=TOKEN_SUBJECT,
            acts_for=chain,
            audience=origin,
            issuer=TOKEN_ISSUER,
            ttl=timedelta(seconds=max(command.credential_ttl_s, 1)),
            extra_claims={
                "keyturn_action_id": command.action_id,
                "keyturn_action": command.action,
                "htm": method,
                "htu": str(url.copy_with(query=None, fragment=None)),
            },
        )
        if self.credential_observer is not None:
            self.credential_observer(token)
        return token


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"".join(chunks)[:MAX_BODY_BYTES], True
    return b"".join(chunks), False


def _body(content: bytes, content_type: str) -> Any:
    if not content:
        return None
    if "json" in content_type.lower():
        try:
            return json.loads(content)
        except ValueError:
            pass
    text = content.decode("utf-8", "replace")
    return text[:MAX_TEXT_CHARS]


def _reason(exc: BaseException) -> str:
    """The most specific cause: "Connection refused" rather than "All connection attempts failed"."""
    root: BaseException | None = exc
    while root is not None and not (isinstance(root, OSError) and root.errno):
        root = root.__cause__ or root.__context__
    if isinstance(root, OSError) and root.errno:
        return os.strerror(root.errno) if root.errno > 0 else str(root.strerror)
    return " ".join(str(exc).split()) or type(exc).__name__
