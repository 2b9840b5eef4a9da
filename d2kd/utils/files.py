"""Small file helpers (standard library only)."""

import hashlib

__all__ = ["file_sha256"]


def file_sha256(path: str) -> str:
    """The sha256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
