"""Reading what the clients report: pushed digests, and the requests they made (from
skopeo/podman/buildah ``--debug`` logs and ``ctr --http-dump``) to tell a cross-repository
mount answered 201 from a fallback upload."""

from __future__ import annotations

import re
from collections.abc import Iterable


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def mount_attempted(log: str, digest: str) -> bool:
    return re.search(rf"[?&]mount=sha256(:|%3A){_hex(digest)}", log) is not None


def uploaded(log: str, digest: str) -> bool:
    """True when the log shows an upload completed with ``?digest=`` for this blob."""
    return re.search(rf"[?&]digest=sha256(:|%3A){_hex(digest)}", log) is not None


def assert_mounted(log: str, digests: Iterable[str], success_marker: str) -> None:
    """Every blob in ``digests`` was mounted (POST ?mount=&from=) and never uploaded; the
    registry answered at least one mount with ``success_marker``."""
    digests = list(digests)
    missing = [d for d in digests if not mount_attempted(log, d)]
    assert not missing, f"the client did not try to mount {missing}:\n{log[-6000:]}"
    fallback = [d for d in digests if uploaded(log, d)]
    assert not fallback, (
        f"mount of {fallback} was not answered 201: the client uploaded them:\n{log[-6000:]}"
    )
    assert success_marker in log, f"no {success_marker!r} in the client log:\n{log[-6000:]}"


def docker_pushed_digest(output: str) -> str:
    """The manifest digest from ``docker push`` output (``<tag>: digest: sha256:... size: N``)."""
    match = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", output)
    assert match, f"no digest in docker push output:\n{output}"
    return match.group(1)


def docker_pulled_digest(output: str) -> str:
    match = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", output, re.MULTILINE)
    assert match, f"no digest in docker pull output:\n{output}"
    return match.group(1)


def docker_layer_results(output: str) -> dict[str, str]:
    """Final status per layer id in ``docker push`` output (Pushed, Mounted from X, ...)."""
    results: dict[str, str] = {}
    for line in output.splitlines():
        match = re.match(r"^([0-9a-f]{12}): (Pushed|Mounted from .+|Layer already exists)$", line)
        if match:
            results[match.group(1)] = match.group(2)
    return results
