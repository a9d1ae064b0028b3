"""Where a model lives: a stage's `model:` reference resolved, a store prefix fetched to a local dir."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sailk8s.errors import ConfigError, InputError, ObjectNotFound
from sailk8s.store.base import ObjectStore

log = logging.getLogger(__name__)

MODEL_CACHE_ENV = "SAIL_MODEL_CACHE"


def resolve_model_ref(store: ObjectStore, ref: str, *, field: str = "config.model",
                      strict: bool = True) -> str:
    """URIs, absolute paths and existing local paths stay; anything else is a prefix of `store`.

    A store prefix with nothing under it is an InputError naming the field and the location;
    with strict=False it is returned unchanged instead (it may be a hub id).
    """
    if "://" in ref or ref.startswith("/") or Path(ref).exists():
        return ref
    prefix = ref.rstrip("/")
    if not any(True for _ in store.list(prefix + "/")):
        if not strict and not hub_offline():
            return ref  # maybe a hub id: loading it says whether it is one
        where = f"no saved model under {store.describe(prefix)} and no local directory {ref!r}"
        if not strict:
            where += "; as a Hugging Face hub id it cannot be fetched: the hub is offline (HF_HUB_OFFLINE)"
        raise InputError(f"{field}: model {ref!r} not found: {where} (did the stage that exports it run?)")
    return store.describe(prefix)


def hub_offline() -> bool:
    """Whether this process may not reach the Hugging Face hub (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where downloaded store prefixes live: argument, $SAIL_MODEL_CACHE, or ~/.cache/sail-pipeline."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "sail-pipeline" / "models"


def fetch_prefix(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download every object under a store prefix once; later calls reuse the cached copy.

    The copy is made in a temp dir beside the target and renamed into place, so a reader (or a
    second rank racing on the same node) never sees a half-downloaded model.
    """
    from sailk8s.store import open_store  # the store layer: file:// and s3:// behind one contract

    root = _cache_root(cache_dir)
    target = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    store = open_store(uri)
    keys = list(store.list(""))
    if not keys:
        raise ObjectNotFound(f"no objects under {uri}: not a model prefix")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        for key in keys:
            dest = tmp / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, dest)
        (tmp / ".complete").write_text(uri)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / ".complete").exists():  # lost a race to a complete copy: fine; else retry
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %d objects from %s into %s", len(keys), uri, target)
    return target


def local_dir(path_or_uri: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local directory for a path or store URI; ConfigError when a local path is missing."""
    s = os.fspath(path_or_uri)
    if "://" in s:
        return fetch_prefix(s, cache_dir)
    path = Path(s).expanduser()
    if not path.exists():
        raise ConfigError(f"pretrained weights not found: {s} does not exist")
    return path
