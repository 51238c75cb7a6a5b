"""OCI plumbing: references, media types, the registry client and the on-disk layout."""
