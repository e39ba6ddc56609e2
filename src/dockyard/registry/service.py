"""The registry: one object holding every core service over one context."""

from __future__ import annotations

from dockyard.config import Settings
from dockyard.db.engine import Database
from dockyard.redis_support import RedisLink
from dockyard.registry.blobs import Blobs
from dockyard.registry.context import Context, Limits
from dockyard.registry.listings import Listings
from dockyard.registry.manifests import Manifests
from dockyard.registry.referrers import Referrers
from dockyard.registry.retention import PullRecorder, Retention
from dockyard.registry.uploads import Uploads
from dockyard.storage.from_settings import make_store, redirect_seconds


class Registry:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.blobs = Blobs(ctx)
        self.uploads = Uploads(ctx)
        self.manifests = Manifests(ctx)
        self.listings = Listings(ctx)
        self.referrers = Referrers(ctx)
        self.pulls = PullRecorder(ctx)
        self.retention = Retention(ctx)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        db = Database.from_settings(settings)
        redis = RedisLink(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
        store = make_store(settings, redis)
        limits = Limits(max_manifest_bytes=settings.max_manifest_bytes)
        return cls(
            Context(
                db=db,
                store=store,
                limits=limits,
                redis=redis,
                redirect_seconds=redirect_seconds(settings),
            )
        )

    def close(self) -> None:
        self.ctx.executor.shutdown(wait=False)
        self.ctx.cache.close()
        if self.ctx.redis is not None:
            self.ctx.redis.close()
        self.ctx.db.dispose()
