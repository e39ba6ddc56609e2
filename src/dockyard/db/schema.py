"""The metadata schema. Changes go through a new migration in db/migrations/versions."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


def _bytewise(length: int) -> String:
    """A name compared and sorted bytewise on every database (migration 0006)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", _bytewise(255), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(140), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", String(140), ForeignKey("blobs.digest"), primary_key=True),
    Column("created_at", Float, nullable=False),
    Index("ix_repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("digest", String(140), nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("artifact_type", String(255), nullable=True),
    Column("subject_digest", String(140), nullable=True),
    Column("annotations", Text, nullable=True),
    Column("size", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("repository_id", "digest", name="uq_manifests_repository_digest"),
    Index("ix_manifests_subject", "repository_id", "subject_digest"),
)

manifest_references = Table(
    "manifest_references",
    metadata,
    Column(
        "manifest_id",
        Integer,
        ForeignKey("manifests.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", String(140), primary_key=True),
    Column("kind", String(16), primary_key=True),  # "blob" or "manifest"
    Index("ix_manifest_references_digest", "digest"),
)

tags = Table(
    "tags",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", _bytewise(128), primary_key=True),
    Column(
        "manifest_id",
        Integer,
        ForeignKey("manifests.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("updated_at", Float, nullable=False),
    Column("pulled_at", Float, nullable=True),  # migration 0004
    Index("ix_tags_manifest", "manifest_id"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("hash_algorithm", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Identity and access (migration 0002)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Integer, nullable=False, default=0),
    Column("disabled", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

organizations = Table(
    "organizations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("public", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

members = Table(
    "members",
    metadata,
    Column(
        "organization_id",
        Integer,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),
)

# Robot accounts and personal access tokens: a secret (shown once, stored as SHA-256: it is
# random and long), a namespace they act in, permissions, an expiry, a revocation.
credentials = Table(
    "credentials",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(8), nullable=False),  # "robot" or "token"
    Column("name", String(128), nullable=False),
    Column("owner_user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("namespace", String(64), nullable=True),
    Column("permissions", Text, nullable=False),  # JSON [{"repository": glob, "actions": [..]}]
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    UniqueConstraint("kind", "name", name="uq_credentials_kind_name"),
)

repository_settings = Table(
    "repository_settings",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("public", Integer, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(255), nullable=True),
    Column("client", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_audit_log_ts", "ts"),
    Index("ix_audit_log_resource", "resource"),
)

# Storage lifecycle (migration 0003)

quotas = Table(
    "quotas",
    metadata,
    Column("namespace", String(64), primary_key=True),
    Column("max_bytes", BigInteger, nullable=True),
    Column("max_repositories", Integer, nullable=True),
)

immutability_rules = Table(
    "immutability_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repository_pattern", String(255), nullable=False),
    Column("tag_pattern", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("repository_pattern", "tag_pattern", name="uq_immutability_rule"),
)

# Retention (migration 0004)

retention_policies = Table(
    "retention_policies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repository_pattern", String(255), nullable=False),
    Column("rules", Text, nullable=False),  # JSON, see registry/retention.py
    Column("created_at", Float, nullable=False),
)

# Failed logins, shared by every server process (migration 0005)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(300), nullable=False),
    Column("ts", Float, nullable=False),
    Index("ix_login_failures_key", "key", "ts"),
)
