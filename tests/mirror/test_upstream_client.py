"""The upstream client against a real registry with Basic authentication (Distribution with
htpasswd): many first requests at once, as a client pulling several layers makes them."""

from __future__ import annotations

import asyncio

from dockyard.mirror.client import UpstreamClient
from dockyard.mirror.upstreams import UpstreamSettings, build_upstreams
from tests.mirror.conftest import Upstream, unique
from tests.support.oci_client import random_image, sha256_digest


def test_concurrent_first_requests_all_authenticate(hub: Upstream) -> None:
    """Requests that went out before another learnt that the upstream wants Basic
    credentials are sent again with them (they used to be taken for refusals: 404)."""
    repository = unique("client/concurrent")
    image = random_image(repository, "1", layer_sizes=(1000, 2000, 3000, 4000, 5000))
    with hub.client() as client:
        client.push_image(image)
    settings = {"hub": UpstreamSettings(url=hub.url, username=hub.username, password=hub.password)}
    (upstream,) = build_upstreams(settings, None)

    async def main() -> list[int | None]:
        client = UpstreamClient(upstream)  # fresh: it does not know the upstream wants Basic
        try:
            return await asyncio.gather(
                *(client.head_blob(repository, sha256_digest(blob)) for blob in image.blobs)
            )
        finally:
            await client.close()

    assert asyncio.run(main()) == [len(blob) for blob in image.blobs]
