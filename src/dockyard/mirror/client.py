"""Talking to an upstream registry: the token dance, content negotiation, verified content.

Authentication follows the Docker token spec: a request goes out with the cached token for
its scope (or Basic credentials, or nothing); a ``401`` with a ``Bearer`` challenge sends us
to its realm (with Basic credentials when configured) for a token, cached per scope until
shortly before it expires, and the request is tried once more. Every manifest's bytes are
hashed and compared with the digest asked for (or the upstream's ``Docker-Content-Digest``);
every blob is hashed while it streams, and its last chunk is held back until the digest and
length match, so a consumer never sees the whole of a wrong blob. A ``429`` (or a ``503``
with ``Retry-After``) makes the client refuse to call the upstream until the time it named:
every process of the registry knows it, through a file in the data directory (one machine)
or, when Redis is configured (several nodes), through a Redis key that expires then.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from dockyard.mirror.upstreams import Upstream
from dockyard.oci import mediatypes as mt
from dockyard.oci.digest import is_digest, is_valid_digest, parse_digest
from dockyard.redis_support import RedisLink

log = logging.getLogger("dockyard.mirror")

MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST]
)
DEFAULT_RETRY_AFTER = 10.0
MAX_RETRY_AFTER = 3600.0
_TOKEN_MARGIN = 10.0  # renew a token this long before it expires
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')

# KEYS[1]: the upstream's "not before" key; ARGV[1]: milliseconds from now. The key lives
# exactly as long as the wait (so its remaining time, PTTL, is the wait, whatever the nodes'
# clocks say); a shorter wait never shortens a longer one.
_WAIT_AT_LEAST = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class UpstreamFailure(Exception):
    """The upstream could not answer now (down, timed out, 5xx, rate-limited, refused our
    credentials): cached content may still be served."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamMissing(Exception):
    """The upstream does not have it (404), or will not show it to us (401/403 with a
    valid token: Docker Hub's answer for repositories that do not exist)."""


class UpstreamMismatch(Exception):
    """The upstream sent content that does not match its digest (or its length)."""


@dataclass(frozen=True)
class FetchedManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int | None


class BlobDownload:
    """A blob coming from the upstream; ``chunks()`` verifies it as it goes."""

    def __init__(self, response: httpx.Response, digest: str, size: int | None) -> None:
        self._response = response
        self.digest = digest
        self.size = size
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The blob's bytes; the last chunk comes only after the whole blob matched its
        digest and length, else ``UpstreamMismatch`` (or ``UpstreamFailure`` for a cut
        connection) is raised instead of it."""
        parsed = parse_digest(self.digest)
        hasher = hashlib.new(parsed.algorithm)
        held: bytes | None = None
        try:
            async for chunk in self._response.aiter_bytes():
                if not chunk:
                    continue
                hasher.update(chunk)
                self.received += len(chunk)
                if self.size is not None and self.received > self.size:
                    raise UpstreamMismatch(
                        f"upstream sent more than the {self.size} bytes it announced for "
                        f"{self.digest}"
                    )
                if held is not None:
                    yield held
                held = chunk
        except httpx.HTTPError as exc:
            raise UpstreamFailure(f"the upstream connection broke: {exc!r}"[:300]) from None
        if self.size is not None and self.received != self.size:
            raise UpstreamFailure(
                f"upstream sent {self.received} of the {self.size} bytes of {self.digest}"
            )
        actual = f"{parsed.algorithm}:{hasher.hexdigest()}"
        if actual != self.digest:
            raise UpstreamMismatch(f"upstream sent {actual} for {self.digest}")
        if held is not None:
            yield held


def _retry_after(value: str | None) -> float:
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    return max(0.0, min(when - time.time(), MAX_RETRY_AFTER))


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` -> ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = value.strip().partition(" ")
    params = {m[1].lower(): m[2] if m[2] else m[3] for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


class UpstreamClient:
    """One upstream registry, over one pooled HTTP client."""

    def __init__(
        self,
        upstream: Upstream,
        max_manifest_bytes: int = 4 * 1024 * 1024,
        state_dir: Path | None = None,
        shared: RedisLink | None = None,
    ) -> None:
        """``state_dir``: where the time the upstream asked us to wait is kept for every
        process of the registry on this machine (else it is this process's alone);
        ``shared``: Redis, to share it with every node instead."""
        self.upstream = upstream
        self._shared = shared
        self._shared_key = shared.key("mirror", "not-before", upstream.name) if shared else ""
        self._wait_at_least = shared.client.register_script(_WAIT_AT_LEAST) if shared else None
        self._shared_down = False
        if shared is not None:
            state_dir = None
        self._not_before_file = state_dir / f"{upstream.name}.not-before" if state_dir else None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.max_manifest_bytes = max_manifest_bytes
        verify: ssl.SSLContext | bool = True
        if upstream.insecure_skip_verify:
            verify = False
        elif upstream.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(upstream.ca_file))
        self.http = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=30.0),
            follow_redirects=True,  # Docker Hub sends blobs from a CDN
            headers={"User-Agent": "dockyard-mirror"},
        )
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)
        self._basic = False  # the upstream asked for Basic credentials
        self._not_before = 0.0  # 429: no request before this time (time.time())

    async def close(self) -> None:
        await self.http.aclose()

    @property
    def _label(self) -> str:
        return f"upstream {self.upstream.name} ({self.upstream.url})"

    # -- requests with authentication ----------------------------------------------------

    def _authorization(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.time():
            return f"Bearer {token[0]}"
        if self._basic and self.upstream.username is not None:
            raw = f"{self.upstream.username}:{self.upstream.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    @property
    def not_before(self) -> float:
        """No request to the upstream before this time (``time.time()``)."""
        if self._shared is not None:
            try:
                left = int(self._shared.client.pttl(self._shared_key))
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                self._shared_down = False
                if left > 0:
                    self._not_before = max(self._not_before, time.time() + left / 1000)
        if self._not_before_file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._not_before = max(
                    self._not_before, float(self._not_before_file.read_text() or 0)
                )
        return self._not_before

    @not_before.setter
    def not_before(self, when: float) -> None:
        self._not_before = when
        if self._wait_at_least is not None:
            milliseconds = int((when - time.time()) * 1000)
            if milliseconds > 0:
                try:
                    self._wait_at_least(keys=[self._shared_key], args=[milliseconds])
                except redis.RedisError as exc:
                    self._redis_failed(exc)
        if self._not_before_file is not None:
            with contextlib.suppress(OSError):
                temporary = self._not_before_file.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(repr(when))
                os.replace(temporary, self._not_before_file)

    def _redis_failed(self, exc: Exception) -> None:
        """Redis did not answer: this process keeps (and obeys) the waits it knows of."""
        if not self._shared_down:
            log.warning(
                "redis unreachable (%s): the wait %s asked for is not shared with other nodes",
                str(exc)[:200],
                self._label,
            )
        self._shared_down = True

    def check_not_before(self) -> None:
        wait = self.not_before - time.time()
        if wait > 0:
            raise UpstreamFailure(
                f"{self._label} asked us to wait (429 Too Many Requests); retry in "
                f"{int(wait) + 1}s",
                retry_after=wait,
            )

    async def _send(
        self, method: str, path: str, remote: str, headers: dict[str, str], stream: bool = False
    ) -> httpx.Response:
        """The response (status below 500, not 401/429); raises ``UpstreamFailure`` or
        ``UpstreamMissing``. A streamed response must be closed by the caller."""
        self.check_not_before()
        scope = f"repository:{remote}:pull"
        url = f"{self.upstream.url}{path}"
        for attempt in range(2):
            request_headers = dict(headers)
            authorization = self._authorization(scope)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            try:
                request = self.http.build_request(method, url, headers=request_headers)
                response = await self.http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise UpstreamFailure(f"{self._label} is unreachable: {exc!r}"[:300]) from None
            status = response.status_code
            if status == 401:
                challenge = response.headers.get("www-authenticate", "")
                await response.aclose()
                if attempt == 0 and await self._authenticate(challenge, scope, authorization):
                    continue
                raise UpstreamMissing(
                    f"{self._label} refused access to {remote} (it does not exist there, or "
                    "needs other credentials)"
                )
            if status == 429 or (status == 503 and "retry-after" in response.headers):
                wait = _retry_after(response.headers.get("retry-after"))
                self.not_before = max(self.not_before, time.time() + wait)
                await response.aclose()
                raise UpstreamFailure(
                    f"{self._label} answered {status}; not asking it again for {int(wait)}s",
                    retry_after=wait,
                )
            if status >= 500:
                await response.aclose()
                raise UpstreamFailure(f"{self._label} answered {status}")
            if status in (403, 404):
                await response.aclose()
                raise UpstreamMissing(f"{self._label} has no {remote} ({status})")
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _authenticate(self, challenge: str, scope: str, sent: str | None) -> bool:
        """Act on a 401's challenge to a request that carried ``sent`` (its Authorization);
        True when a retry may now succeed."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            # refused only if it was sent: a request that went out before a concurrent one
            # learnt that the upstream wants Basic is tried again with the credentials
            if self.upstream.username is None or (sent or "").startswith("Basic "):
                return False
            self._basic = True
            return True
        if scheme != "bearer" or not params.get("realm"):
            return False
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        auth = None
        if self.upstream.username is not None:
            auth = httpx.BasicAuth(self.upstream.username, self.upstream.password or "")
        try:
            response = await self.http.get(params["realm"], params=query, auth=auth)
        except httpx.HTTPError as exc:
            raise UpstreamFailure(
                f"the token service of {self._label} is unreachable: {exc!r}"[:300]
            ) from None
        if response.status_code == 429:
            wait = _retry_after(response.headers.get("retry-after"))
            self.not_before = max(self.not_before, time.time() + wait)
            raise UpstreamFailure(f"the token service of {self._label} answered 429", wait)
        if response.status_code in (401, 403):
            raise UpstreamFailure(
                f"the token service of {self._label} refused the configured credentials"
            )
        if response.status_code != 200:
            raise UpstreamFailure(
                f"the token service of {self._label} answered {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamFailure(f"the token service of {self._label} sent no token") from None
        if not isinstance(token, str) or not token:
            raise UpstreamFailure(f"the token service of {self._label} sent no token")
        if len(self._tokens) > 1000:
            self._tokens.clear()
        expires = time.time() + max(expires_in - _TOKEN_MARGIN, 1.0)
        self._tokens[scope] = (token, expires)
        return True

    # -- manifests ------------------------------------------------------------------------

    async def head_manifest(self, remote: str, reference: str) -> ManifestHead | None:
        """The digest a tag points to, without a pull; None when the upstream does not say
        (then a GET is needed)."""
        response = await self._send(
            "HEAD", f"/v2/{remote}/manifests/{reference}", remote, {"Accept": MANIFEST_ACCEPT}
        )
        digest = response.headers.get("docker-content-digest")
        if response.status_code != 200 or not digest or not is_valid_digest(digest):
            return None
        length = response.headers.get("content-length")
        return ManifestHead(
            digest,
            mt.base_media_type(response.headers.get("content-type")),
            int(length) if length and length.isdigit() else None,
        )

    async def get_manifest(self, remote: str, reference: str) -> FetchedManifest:
        response = await self._send(
            "GET",
            f"/v2/{remote}/manifests/{reference}",
            remote,
            {"Accept": MANIFEST_ACCEPT},
            stream=True,
        )
        try:
            if response.status_code != 200:
                raise UpstreamFailure(f"{self._label} answered {response.status_code}")
            parts: list[bytes] = []
            size = 0
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_manifest_bytes:
                        raise UpstreamMismatch(
                            f"{self._label} sent a manifest larger than "
                            f"{self.max_manifest_bytes} bytes"
                        )
                    parts.append(chunk)
            except httpx.HTTPError as exc:
                raise UpstreamFailure(f"the upstream connection broke: {exc!r}"[:300]) from None
            header_digest = response.headers.get("docker-content-digest")
            media_type = mt.base_media_type(response.headers.get("content-type"))
        finally:
            await response.aclose()
        content = b"".join(parts)
        expected = reference if is_digest(reference) else header_digest
        if expected is not None and is_valid_digest(expected):
            algorithm = parse_digest(expected).algorithm
        else:
            expected, algorithm = None, "sha256"
        actual = f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}"
        if expected is not None and actual != expected:
            raise UpstreamMismatch(
                f"{self._label} sent a manifest hashing to {actual} for {expected}"
            )
        return FetchedManifest(actual, media_type, content)

    # -- blobs ----------------------------------------------------------------------------

    async def head_blob(self, remote: str, digest: str) -> int | None:
        """The blob's size at the upstream (None when it does not say)."""
        response = await self._send("HEAD", f"/v2/{remote}/blobs/{digest}", remote, {})
        if response.status_code != 200:
            raise UpstreamFailure(f"{self._label} answered {response.status_code}")
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else None

    @asynccontextmanager
    async def blob(self, remote: str, digest: str) -> AsyncIterator[BlobDownload]:
        response = await self._send(
            "GET",
            f"/v2/{remote}/blobs/{digest}",
            remote,
            {"Accept-Encoding": "identity"},
            stream=True,
        )
        try:
            if response.status_code != 200:
                raise UpstreamFailure(f"{self._label} answered {response.status_code}")
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else None
            if response.headers.get("content-encoding", "identity") != "identity":
                size = None  # the length of the encoded bytes, not of the blob
            yield BlobDownload(response, digest, size)
        finally:
            await response.aclose()

    # -- tags -----------------------------------------------------------------------------

    async def tags(self, remote: str, query: str) -> bytes:
        """The upstream's tag list (JSON bytes, as it sent them)."""
        path = f"/v2/{remote}/tags/list" + (f"?{query}" if query else "")
        response = await self._send("GET", path, remote, {"Accept": "application/json"})
        if response.status_code != 200:
            raise UpstreamFailure(f"{self._label} answered {response.status_code}")
        return response.content
