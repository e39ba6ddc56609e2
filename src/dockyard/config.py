"""Settings: defaults, then a YAML file (``--config``), then ``DOCKYARD_*`` variables,
then command-line flags (highest)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dockyard.mirror.upstreams import UpstreamSettings, build_upstreams

if TYPE_CHECKING:
    from dockyard.auth.external import TrustStore

# sendfile_listen's default: chosen by `dockyard serve` before the workers start
SENDFILE_AUTO = "auto"


class Settings(BaseSettings):
    """Every key is documented in docs/configuration.md; the external token issuer's
    (``token_issuer_mode`` and ``trusted_*``) in docs/external-auth.md."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="forbid", validate_default=True)

    listen: str = Field("127.0.0.1:5000", description="HOST:PORT to serve on")
    data_dir: Path = Field(Path("dockyard-data"), description="where SQLite and blobs live")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/dockyard.db"
    )
    # connection pool of PostgreSQL, per server process (docs/scale-out.md)
    database_pool_size: int = Field(10, ge=1, le=1000, description="connections kept open")
    database_max_overflow: int = Field(
        20, ge=0, le=1000, description="extra connections opened under load, closed after"
    )
    database_pool_pre_ping: bool = Field(
        True, description="test a pooled connection before use (survives database restarts)"
    )
    database_pool_recycle_seconds: int = Field(
        1800, ge=0, description="replace connections older than this; 0: never"
    )
    database_pool_timeout_seconds: float = Field(
        30.0, gt=0, description="how long a request waits for a free connection"
    )
    workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 8),
        ge=1,
        le=64,
        description="server processes sharing the data (default: one per CPU, at most 8)",
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_open_registry: bool = Field(
        False,
        description="permit listening on a non-loopback address without authentication",
    )
    auth: bool = Field(
        True, description="require authentication (Docker token auth, users, robots)"
    )
    token_service: str = Field("dockyard", description="the service name tokens are for")
    token_issuer: str = Field("dockyard", description="the iss claim of issued tokens")
    token_ttl_seconds: int = Field(300, ge=60, le=86400)
    token_realm: str | None = Field(
        None, description="absolute URL of the token endpoint; default: from the request"
    )
    keys_dir: Path | None = Field(None, description="token signing keys; default <data_dir>/keys")
    # trusting an external token issuer instead (docs/external-auth.md)
    token_issuer_mode: Literal["internal", "external"] = Field(
        "internal",
        description="internal: Dockyard issues tokens; external: it trusts another token server",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="external mode: PEM files with the issuer's public keys or certificates",
    )
    trusted_jwks: Path | None = Field(
        None, description="external mode: a JWKS file with the issuer's public keys"
    )
    trusted_root_certificates: Path | None = Field(
        None, description="external mode: PEM root certificates that x5c chains must reach"
    )
    trusted_algorithms: list[str] | None = Field(
        None, description="external mode: accepted JWS algorithms; default every asymmetric one"
    )
    anonymous_pull: bool = Field(True, description="anonymous users may pull public repositories")
    anonymous_push: bool = Field(False, description="anyone may push (closed networks only)")
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="requests a second per identity and per address; 0: no limit"
    )
    rate_limit_burst: int = Field(200, ge=1)
    # what several nodes share through Redis (dockyard.redis_support, docs/scale-out.md)
    redis_url: str | None = Field(
        None,
        description="redis://HOST:PORT/DB (rediss:// for TLS): shared cache invalidation, "
        "rate limits and locks for several nodes; default: none (per-machine only)",
    )
    redis_prefix: str = Field(
        "dockyard",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="prefix of every Redis key (registries sharing one Redis need different ones)",
    )
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # the registry mirror / pull-through cache (docs/mirror.md)
    upstreams: dict[str, UpstreamSettings] = Field(
        default_factory=dict,
        description="upstream registries by name: url, username, password, ca_file, "
        "insecure_skip_verify, prefix, public, tag_ttl_seconds (hub: Docker Hub, built in)",
    )
    mirror_upstream: str | None = Field(
        None, description="the upstream served for plain names (Docker daemon mirror mode)"
    )
    mirror_cache_max_bytes: int | None = Field(
        None, ge=0, description="evict least recently pulled proxied repositories above this"
    )
    log_level: str = "info"
    access_log: bool = True
    upload_purge_after_seconds: int = Field(7 * 24 * 3600, ge=60)
    fsync_blobs: bool = Field(
        True,
        description="fsync a blob before it becomes visible (power-loss safety; kill -9 is "
        "safe either way)",
    )
    # where blob bytes live (dockyard.storage.from_settings, docs/scale-out.md)
    storage: Literal["filesystem", "s3"] = Field(
        "filesystem", description="filesystem: under data_dir; s3: an S3-compatible bucket"
    )
    s3_endpoint: str | None = Field(
        None, description="URL of the S3 service (MinIO, Ceph RGW, SeaweedFS); none: AWS S3"
    )
    s3_bucket: str | None = Field(None, description="the bucket blobs and uploads go to")
    s3_region: str = "us-east-1"
    s3_prefix: str = Field("", description="key prefix inside the bucket (several registries)")
    s3_access_key: str | None = Field(
        None, description="none: the AWS credential chain (environment, profile, instance role)"
    )
    s3_secret_key: str | None = None
    s3_addressing: Literal["path", "virtual"] | None = Field(
        None, description="bucket in the path or in the host name; default path with an endpoint"
    )
    s3_redirect: bool = Field(
        True, description="answer blob GETs with a redirect to a presigned URL, else stream"
    )
    s3_presign_seconds: int = Field(1200, ge=60, le=7 * 24 * 3600)
    s3_chunk_mib: int = Field(
        16, ge=5, le=1024, description="uploads are stored in objects of this many MiB"
    )
    gc_interval_seconds: int = Field(
        0, ge=0, description="run garbage collection this often in `dockyard worker`; 0: never"
    )
    gc_grace_seconds: int = Field(
        3600, ge=0, description="never collect anything younger (protects pushes in flight)"
    )
    gc_delete_untagged: bool = Field(
        False, description="collect manifests no tag, index or subject keeps"
    )
    retention_interval_seconds: int = Field(
        0, ge=0, description="apply retention policies this often in `dockyard worker`; 0: never"
    )
    # the data port: zero-copy blob downloads and uploads (dockyard.http.dataport)
    sendfile_listen: str | None = Field(
        "auto",
        description="HOST:PORT of the data port: blob GETs are redirected there and uploads "
        "sent there with signed links, the bytes moved with sendfile(2) and splice(2). "
        "`auto` (default): the listen address's port + 1 on plain HTTP with filesystem "
        "storage, when that port is free; `off`: never",
    )
    sendfile_url: str | None = Field(
        None,
        description="base URL clients reach the sendfile port at; default: the hostname "
        "the client used, with the sendfile port",
    )
    sendfile_min_bytes: int = Field(
        8 * 1024 * 1024, ge=0, description="smaller blobs are sent directly, without a redirect"
    )
    sendfile_link_seconds: int = Field(60, ge=5, le=3600, description="how long a link works")
    sendfile_secret: str | None = Field(
        None,
        description="key that signs the links; set the same on every node behind one load "
        "balancer. Default: random, made once and kept in <keys_dir>/link-secret",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("sendfile_listen", mode="before")
    @classmethod
    def _check_sendfile_listen(cls, value: object) -> object:
        if value is None or value is False:  # YAML reads a bare `off` as false
            return None
        if not isinstance(value, str):
            return value  # the type check that follows refuses it
        if value.strip().lower() in ("", "off", "none", "false"):
            return None
        if value.strip().lower() == "auto":
            return SENDFILE_AUTO
        parse_listen(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
                raise ValueError(
                    "redis_url must be redis://HOST:PORT/DB, rediss://... or unix:///PATH"
                )
        return value

    @field_validator("trusted_keys")
    @classmethod
    def _absolute_paths(cls, value: list[Path]) -> list[Path]:
        return [path.expanduser().absolute() for path in value]

    @field_validator("trusted_jwks", "trusted_root_certificates")
    @classmethod
    def _absolute_path(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @model_validator(mode="after")
    def _check_upstreams(self) -> Settings:
        build_upstreams(self.upstreams, self.mirror_upstream)  # raises saying what is wrong
        return self

    @model_validator(mode="after")
    def _check_s3(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage: s3 needs s3_bucket")
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            raise ValueError("set both s3_access_key and s3_secret_key, or neither")
        if self.s3_endpoint is not None:
            endpoint = urlsplit(self.s3_endpoint)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise ValueError(
                    f"s3_endpoint must be an http(s) URL, got {self.s3_endpoint[:80]!r}"
                )
        return self

    @model_validator(mode="after")
    def _check_token_issuer(self) -> Settings:
        trust = [self.trusted_keys, self.trusted_jwks, self.trusted_root_certificates]
        if self.token_issuer_mode == "internal":
            if any(trust) or self.trusted_algorithms is not None:
                raise ValueError(
                    "trusted_keys, trusted_jwks, trusted_root_certificates and "
                    "trusted_algorithms apply only with token_issuer_mode: external"
                )
            return self
        if not self.auth:
            raise ValueError("token_issuer_mode: external needs auth turned on (--auth)")
        realm = urlsplit(self.token_realm or "")
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise ValueError(
                "token_issuer_mode: external needs token_realm, the absolute URL of the "
                "external token server's endpoint (https://auth.example.com/token)"
            )
        # fail now, with the reason, rather than in every worker
        from dockyard.auth.external import TrustError
        from dockyard.auth.tokens import EXTERNAL_ALGORITHMS

        unknown = set(self.trusted_algorithms or ()) - EXTERNAL_ALGORITHMS
        if unknown or self.trusted_algorithms == []:
            raise ValueError(
                f"trusted_algorithms: {', '.join(sorted(unknown)) or 'empty'}; choose from "
                f"{', '.join(sorted(EXTERNAL_ALGORITHMS))} (never none or HMAC)"
            )
        try:
            self.trust_store()
        except TrustError as exc:
            raise ValueError(str(exc)) from None
        return self

    def trust_store(self) -> TrustStore:
        """External mode: the :class:`dockyard.auth.external.TrustStore` these settings
        describe (the files are read, and re-read when they change)."""
        from dockyard.auth.external import TrustStore
        from dockyard.auth.tokens import EXTERNAL_ALGORITHMS

        return TrustStore(
            keys=self.trusted_keys,
            jwks=self.trusted_jwks,
            roots=self.trusted_root_certificates,
            algorithms=self.trusted_algorithms or EXTERNAL_ALGORITHMS,
        )

    @property
    def resolved_keys_dir(self) -> Path:
        return (self.keys_dir or self.data_dir / "keys").resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dockyard.db').resolve()}"

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (flags and the YAML file, merged by load_settings) wins over the environment
        return (init_settings, env_settings)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"listen must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional YAML file, the environment and explicit overrides.

    Precedence, lowest first: defaults, the YAML file, ``DOCKYARD_*`` variables, flags. The
    file's value for a key is dropped when the environment sets that key.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: top level must be a mapping of settings")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if f"DOCKYARD_{name.upper()}" not in os.environ:
                values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
