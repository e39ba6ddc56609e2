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

if TYPE_CHECKING:
    from dockyard.auth.external import TrustStore


class Settings(BaseSettings):
    """Every key is documented in docs/configuration.md; the external token issuer's
    (``token_issuer_mode`` and ``trusted_*``) in docs/external-auth.md."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="forbid", validate_default=True)

    listen: str = Field("127.0.0.1:5000", description="HOST:PORT to serve on")
    data_dir: Path = Field(Path("dockyard-data"), description="where SQLite and blobs live")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/dockyard.db"
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
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    log_level: str = "info"
    access_log: bool = True
    upload_purge_after_seconds: int = Field(7 * 24 * 3600, ge=60)
    fsync_blobs: bool = Field(
        True,
        description="fsync a blob before it becomes visible (power-loss safety; kill -9 is "
        "safe either way)",
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

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
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
