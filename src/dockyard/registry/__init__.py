"""The registry core, transport-free: uploads, blobs, manifests, tags, referrers."""
