"""A stage's `model:` reference: where it is looked for, and what a user reads when it is nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.vlm.modelref import resolve_model_ref
from sailk8s.errors import InputError
from sailk8s.store.local import LocalStore


def test_store_prefix_local_path_and_uri(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", durable=False)
    store.put("models/judge/config.json", b"{}")
    assert resolve_model_ref(store, "models/judge") == store.describe("models/judge")
    local = tmp_path / "here"
    local.mkdir()
    assert resolve_model_ref(store, str(local)) == str(local)
    assert resolve_model_ref(store, "s3://bucket/models/x") == "s3://bucket/models/x"


def test_a_model_found_nowhere_names_every_place_looked(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `model: models/nope` was taken for a hub id and failed with "We couldn't connect to
    'https://huggingface.co'", naming neither the store nor the offline hub."""
    store = LocalStore(tmp_path / "store", durable=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        resolve_model_ref(store, "models/nope", field="config.filters[3].model", strict=False)
    msg = str(err.value)
    assert "config.filters[3].model" in msg and store.describe("models/nope") in msg
    assert "no local directory 'models/nope'" in msg and "hub is offline" in msg
    with pytest.raises(InputError, match="no saved model under"):  # strict: a store prefix only
        resolve_model_ref(store, "models/nope")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model_ref(store, "org/model", strict=False) == "org/model"  # online: maybe a hub id
