"""Where a stage's `model:` reference points: a prefix of the run's store, a store URI or a path."""

from __future__ import annotations

from pathlib import Path

from sailk8s.errors import InputError
from sailk8s.store.base import ObjectStore


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
        if not strict:
            return ref
        raise InputError(f"{field}: no saved model under {store.describe(prefix)} "
                         "(did the stage that exports it run?)")
    return store.describe(prefix)
