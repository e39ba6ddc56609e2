"""Blob bytes: one ``BlobStore`` interface, one driver per backend."""
