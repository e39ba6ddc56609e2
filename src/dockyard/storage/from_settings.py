"""The blob store and the locks a configuration asks for: the one place that chooses them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dockyard.config import Settings
from dockyard.storage.base import BlobStore
from dockyard.storage.filesystem import FilesystemBlobStore
from dockyard.storage.locks import Locks

if TYPE_CHECKING:
    from dockyard.redis_support import RedisLink


def make_locks(settings: Settings, redis: RedisLink | None = None) -> Locks:
    """Locks every process of this registry shares (uploads, blob publish vs. GC): Redis
    locks when ``redis_url`` is set (several nodes on one bucket), else ``FileLocks`` under
    ``data_dir/locks`` (the processes of one machine)."""
    from dockyard.redis_locks import make_locks as make_shared_locks

    return make_shared_locks(settings, redis)


def make_store(settings: Settings, redis: RedisLink | None = None) -> BlobStore:
    if settings.storage == "s3":
        from dockyard.storage.s3 import MIB, S3BlobStore, S3Options

        assert settings.s3_bucket is not None  # checked by Settings
        options = S3Options(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            addressing=settings.s3_addressing,
            chunk_bytes=settings.s3_chunk_mib * MIB,
        )
        return S3BlobStore.from_options(options, make_locks(settings, redis))
    return FilesystemBlobStore(settings.data_dir.resolve(), fsync=settings.fsync_blobs)


def redirect_seconds(settings: Settings) -> int:
    """How long the presigned URLs blob GETs are redirected to stay valid; 0: no redirects."""
    return settings.s3_presign_seconds if settings.storage == "s3" and settings.s3_redirect else 0
