"""The OpenAPI schemas of the storage lifecycle answers (quotas, immutability rules,
retention policies and runs, usage, garbage collection reports), part of the management
API's document (``api_routes.SCHEMAS``)."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


_COUNT = {"type": "integer", "minimum": 0}
_LIMIT = {"type": ["integer", "null"], "minimum": 0, "description": "null: no limit"}


def _entries(*fields: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": list(fields),
            "properties": {f: {"type": "string"} for f in fields},
        },
    }


LIFECYCLE_SCHEMAS: dict[str, dict[str, Any]] = {
    "QuotaLimits": {
        "type": "object",
        "required": ["bytes", "repositories"],
        "properties": {"bytes": _LIMIT, "repositories": _LIMIT},
    },
    "Quota": {
        "type": "object",
        "required": ["namespace", "limits", "used"],
        "properties": {
            "namespace": {"type": "string"},
            "limits": _ref("QuotaLimits"),
            "used": {
                "type": "object",
                "required": ["bytes", "repositories"],
                "properties": {
                    "bytes": {
                        **_COUNT,
                        "description": "the namespace's distinct blobs and manifests",
                    },
                    "repositories": _COUNT,
                },
            },
        },
    },
    "ImmutabilityRule": {
        "type": "object",
        "required": ["id", "repository", "tag"],
        "properties": {
            "id": {"type": "integer"},
            "repository": {"type": "string", "description": "a repository glob under NS/"},
            "tag": {"type": "string", "description": "a tag glob"},
        },
    },
    "RetentionPolicy": {
        "type": "object",
        "required": [
            "id",
            "repository",
            "keep_last_pushed",
            "keep_last_pulled",
            "keep_pushed_within_days",
            "keep_pulled_within_days",
            "include",
            "exclude",
            "untagged",
        ],
        "properties": {
            "id": {"type": "integer"},
            "repository": {"type": "string", "description": "a repository glob under NS/"},
            "keep_last_pushed": {"type": ["integer", "null"]},
            "keep_last_pulled": {"type": ["integer", "null"]},
            "keep_pushed_within_days": {"type": ["number", "null"]},
            "keep_pulled_within_days": {"type": ["number", "null"]},
            "include": {"type": "array", "items": {"type": "string"}},
            "exclude": {"type": "array", "items": {"type": "string"}},
            "untagged": {"type": "boolean"},
        },
    },
    "RetentionReport": {
        "type": "object",
        "required": ["dry_run", "tags_deleted", "immutable_tags_kept", "manifests_deleted"],
        "properties": {
            "dry_run": {"type": "boolean"},
            "tags_deleted": {
                **_entries("repository", "tag"),
                "description": "deleted, or (dry run) that would be",
            },
            "immutable_tags_kept": _entries("repository", "tag"),
            "manifests_deleted": {
                **_entries("repository", "digest"),
                "description": "untagged manifests deleted (not listed by a dry run)",
            },
        },
    },
    "RepositoryUsage": {
        "type": "object",
        "required": ["repository", "bytes", "blob_bytes", "manifest_bytes"],
        "properties": {
            "repository": {"type": "string"},
            "bytes": {**_COUNT, "description": "blob_bytes + manifest_bytes"},
            "blob_bytes": {**_COUNT, "description": "every blob linked to the repository"},
            "manifest_bytes": _COUNT,
        },
    },
    "NamespaceUsage": {
        "type": "object",
        "required": ["namespace", "stored_bytes", "logical_bytes", "repositories", "quota"],
        "properties": {
            "namespace": {"type": "string", "description": "'' for top-level repositories"},
            "stored_bytes": {
                **_COUNT,
                "description": "each blob once however many of its repositories share it "
                "(what the quota counts)",
            },
            "logical_bytes": {**_COUNT, "description": "the sum over its repositories"},
            "repositories": {**_COUNT, "description": "how many repositories it has"},
            "quota": {"anyOf": [_ref("QuotaLimits"), {"type": "null"}]},
            "repository_usage": {
                **_list_of("RepositoryUsage"),
                "description": "when reading one namespace",
            },
        },
    },
    "RegistryUsage": {
        "type": "object",
        "required": ["stored_bytes", "logical_bytes", "namespaces", "repositories"],
        "properties": {
            "stored_bytes": {**_COUNT, "description": "every blob once, every manifest"},
            "logical_bytes": {**_COUNT, "description": "the sum over repositories"},
            "namespaces": _list_of("NamespaceUsage"),
            "repositories": _list_of("RepositoryUsage"),
        },
    },
    "GcReport": {
        "type": "object",
        "required": [
            "dry_run",
            "manifests_deleted",
            "links_removed",
            "blobs_deleted",
            "orphan_files_deleted",
            "bytes_freed",
            "seconds",
        ],
        "properties": {
            "dry_run": {"type": "boolean"},
            "manifests_deleted": _entries("repository", "digest"),
            "links_removed": _COUNT,
            "blobs_deleted": {"type": "array", "items": {"type": "string"}},
            "orphan_files_deleted": {"type": "array", "items": {"type": "string"}},
            "bytes_freed": _COUNT,
            "seconds": {"type": "number"},
        },
    },
}
