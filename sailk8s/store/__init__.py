"""Object stores: `open_store(uri)` for file:///abs/path (LocalStore) and s3://bucket/prefix (S3Store)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from sailk8s.errors import ConfigError
from sailk8s.settings import Settings
from sailk8s.store.base import ObjectStore, validate_key, validate_prefix

__all__ = ["ObjectStore", "open_store", "validate_key", "validate_prefix"]


def open_store(uri: str, settings: Settings | None = None, *, check: bool = False) -> ObjectStore:
    """The store a URI names; S3 endpoint and credentials come from settings (SAIL_STORE_*).

    `check=True` also verifies it is reachable (StoreUnavailable naming the cause otherwise);
    without it the first operation reports the same problems.
    """
    store: ObjectStore
    if uri.startswith("file://"):
        from sailk8s.store.local import LocalStore

        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"store URI {uri!r}: a file store needs an absolute path, e.g. file:///data/sail")
        store = LocalStore(unquote(parts.path))
    elif uri.startswith("s3://"):
        # Imported here so file:// users (and `--help`) never load minio and urllib3.
        from sailk8s.settings import load_settings
        from sailk8s.store.s3 import s3_store_from_uri

        store = s3_store_from_uri(uri, settings if settings is not None else load_settings())
    else:
        scheme = uri.split("://", 1)[0] if "://" in uri else uri
        raise ConfigError(f"store URI {uri!r}: unsupported scheme {scheme!r} "
                          "(use file:///abs/path or s3://bucket/prefix)")
    if check:
        store.check()
    return store
