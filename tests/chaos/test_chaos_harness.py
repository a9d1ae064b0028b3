"""The harness itself, fast: the catalogue, seeded drawing, and that each invariant catches its violation."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tarfile
from array import array
from pathlib import Path

from sailk8s.spec import parse_pipeline
from sailk8s.store.local import LocalStore
from sailk8s.testing.chaos import CATALOGUE, chaos_pipeline, draw, kinds_for, snapshot
from sailk8s.testing.chaos.catalogue import BY_NAME, KUBE, LOCAL
from sailk8s.testing.chaos.invariants import check_accounting, check_names, compare_outputs, weights_close
from sailk8s.testing.chaos.shapes import CHAOS_SHAPES

ROOT = Path(__file__).resolve().parents[2]
REPORT = "runs/chaos/filter/report.json"


def test_catalogue_has_the_issues_kinds_and_lists_one_a_line() -> None:
    assert len(CATALOGUE) >= 20 and len(BY_NAME) == len(CATALOGUE)
    out = subprocess.run([sys.executable, "-m", "sailk8s.testing.chaos", "--list"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.splitlines()
    assert [line.split()[0] for line in out] == [k.name for k in CATALOGUE]
    assert all(k.description and k.injection and k.strikes for k in CATALOGUE)


def test_a_seed_draws_the_same_scenario_and_seeds_differ() -> None:
    for backend in (LOCAL, KUBE):
        assert str(draw(5, backend, CHAOS_SHAPES)) == str(draw(5, backend, CHAOS_SHAPES))
        scenarios = {str(draw(s, backend, CHAOS_SHAPES)).split(":", 1)[1] for s in range(1, 30)}
        assert len(scenarios) > 20
        drawn = {st.kind for s in range(1, 200) for st in draw(s, backend, CHAOS_SHAPES).strikes}
        assert drawn == {k.name for k in kinds_for(backend)}  # every drawable kind comes up
        for s in range(1, 50):
            sc = draw(s, backend, CHAOS_SHAPES)
            assert 2 <= len(sc.strikes) <= 3
            assert sum(BY_NAME[st.kind].permanent for st in sc.strikes) <= 1


def _shard(keys: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key in keys:
            data = json.dumps({"k": key}).encode()
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _safetensors(values: list[float]) -> bytes:
    raw = array("f", values).tobytes()
    meta = {"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(raw)]}}
    header = json.dumps(meta).encode()
    return struct.pack("<Q", len(header)) + header + raw


def test_invariants_catch_what_they_promise(tmp_path: Path) -> None:
    doc = chaos_pipeline("local")
    pipeline = parse_pipeline(doc)
    store = LocalStore(tmp_path / "a", durable=False)
    store.put("data/filtered/shard-000000.tar", _shard(["a", "b"]))
    store.put("runs/chaos/filter/done/shard-000000.json", json.dumps({"output": "x", "sha256": "1"}).encode())
    store.put(REPORT, json.dumps({"samples_in": 3, "kept": 2, "dropped_total": 1}).encode())
    ref = snapshot(store, pipeline)
    assert compare_outputs(ref, ref) == []
    assert not [v for v in check_accounting(ref, pipeline) if "filter" in v]
    # a shard with a sample written twice, a marker with another digest, a report that does not add up
    store.put("data/filtered/shard-000000.tar", _shard(["a", "a"]))
    store.put("runs/chaos/filter/done/shard-000000.json", json.dumps({"output": "x", "sha256": "2"}).encode())
    store.put(REPORT, json.dumps({"samples_in": 4, "kept": 2, "dropped_total": 1}).encode())
    bad = snapshot(store, pipeline)
    found = compare_outputs(ref, bad)
    assert any("bytes differ" in v for v in found) and any("marker" in v for v in found)
    found = check_accounting(bad, pipeline)
    assert any("written twice" in v for v in found) and any("samples_in 4" in v for v in found)
    assert check_names(["r-a-1", "r-a-2"]) == [] and check_names(["r-a-1", "r-a-1"]) != []
    assert weights_close(_safetensors([1.0, 2.0]), _safetensors([1.0, 2.0 + 1e-7])) is None
    assert "differs" in (weights_close(_safetensors([1.0, 2.0]), _safetensors([1.0, 2.5])) or "")
