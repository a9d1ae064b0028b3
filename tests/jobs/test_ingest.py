"""Ingest: the built-in sample sets and folder/JSONL/CSV sources with bad rows; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jobs_helpers import ROOT, png_bytes, run_job
from PIL import Image

from jobs.core import samples as smp
from jobs.core import shards as sh


def read_set(store: Path, prefix: str) -> list[sh.Sample]:
    paths = sorted((store / prefix).glob("*.tar"))
    return [s for p in paths for s in sh.read_shard(p) if isinstance(s, sh.Sample)]


def test_sample_sets_fields_and_held_out_eval() -> None:
    sizes = smp.SampleSizes()
    evals = smp.eval_items(sizes)
    assert len(evals) == 200
    assert {e.meta["answer"] for e in evals} == {str(d) for d in range(10)}
    assert all(e.meta["question"] == smp.DIGIT_QUESTION and e.meta["choices"] == list("0123456789")
               for e in evals)
    held = {e.meta["source"] for e in evals}
    for name in ("raw", "reference", "sft-knowledge", "sft-instruction"):
        items = smp.BUILDERS[name](sizes)
        assert not held & {i.meta["source"] for i in items}, name  # eval digits appear nowhere else
        assert len({i.key for i in items}) == len(items), name
    raw = smp.raw_items(sizes)
    quality = [i.meta.get("alt_quality") for i in raw if i.meta.get("kind") == "digit"]
    assert {"useful", "noisy", "wrong"} <= set(quality)
    assert sum(q == "useful" for q in quality) > len(quality) / 2
    assert any(i.meta["source"].startswith("skimage.data/") for i in raw)
    ref = smp.reference_items(sizes)
    assert all(len(i.meta["caption"].split()) >= 10 for i in ref)
    # Reference photos are raw's; reference digits are not: a captioner never trained on a raw digit.
    raw_keys = {i.key for i in raw}
    assert {i.key for i in ref if i.meta.get("kind") == "photo"} <= raw_keys
    assert not {i.key for i in ref if i.meta.get("kind") == "digit"} & raw_keys
    instr = smp.sft_instruction_items(sizes)
    answers = [i.meta["conversations"][1]["value"] for i in instr]
    assert all(a in set("0123456789") | {"odd", "even"} for a in answers)
    assert 0.05 < sum(a in ("odd", "even") for a in answers) / len(answers) < 0.3
    for i in instr[:50]:  # the answer is the true label
        q, a = i.meta["conversations"][0]["value"], i.meta["conversations"][1]["value"]
        label = i.meta["label"]
        assert a == (str(label) if q == smp.DIGIT_QUESTION else ("even" if label % 2 == 0 else "odd"))
    know = smp.sft_knowledge_items(sizes)
    assert all(i.meta["conversations"][0]["value"] == smp.DESCRIBE_QUESTION for i in know)


def test_held_out_checks_for_the_captioner_and_the_judge() -> None:
    sizes = smp.SampleSizes(reference_digits=100)
    held = {e.meta["source"] for e in smp.eval_items(sizes)}
    checks = smp.caption_eval_items(sizes)
    assert len(checks) == 200 and {c.meta["source"] for c in checks} == held
    for c in checks:
        assert c.meta["question"] == smp.CAPTION_QUESTION and c.meta["answer"] == str(c.meta["label"])
        assert c.meta["choice_aliases"][c.meta["answer"]] == [smp.NUMBER_WORDS[c.meta["label"]]]
    pairs = smp.judge_eval_items(sizes)
    assert {p.meta["source"] for p in pairs} == held  # never seen by captioner or judge
    assert sum(p.meta["mismatched"] for p in pairs) == 100
    for p in pairs:  # a mismatched caption names another digit; a matched one the image's
        assert (f"digit {p.meta['label']} " in p.meta["caption"]) != p.meta["mismatched"]
    judge = smp.judge_items(sizes)
    assert not held & {j.meta["source"] for j in judge}
    replies = [j.meta["conversations"][1]["value"] for j in judge]
    assert replies.count(smp.judge_reply(4, 5)) >= 100 and replies.count(smp.judge_reply(4, 1)) >= 100
    assert {smp.judge_reply(1, 1), smp.judge_reply(2, 5)} <= set(replies)
    for j in judge:  # the judge learns on exactly the prompt the filter asks with
        assert j.meta["conversations"][0]["value"].startswith("<image>\nHere is a caption of the image: ")


def test_ingest_samples_stage(store_dir: Path, make_env) -> None:
    cfg = {"source": "samples", "shard_size": 100, "sets": ["raw", "eval"],
           "samples": {"raw_digits": 150, "eval_digits": 50, "duplicates": 2, "thumbnails": 1}}
    res = run_job("jobs.ingest", make_env(stage="ingest", kind="ingest", outputs=["data/s"], config=cfg))
    assert res.returncode == 0, res.stderr
    raw = read_set(store_dir, "data/s/raw")
    ev = read_set(store_dir, "data/s/eval")
    assert len(ev) == 50 and len(raw) == 150 + len(smp.PHOTOS) + 2 + 1
    assert sorted(p.name for p in (store_dir / "data/s/raw").glob("*.tar")) == \
        ["shard-000000.tar", "shard-000001.tar"]
    s = raw[0]
    assert {"alt_text", "source", "width", "height"} <= s.meta.keys()
    assert Image.open(__import__("io").BytesIO(s.image_bytes)).size == (s.meta["width"], s.meta["height"])
    rep = json.loads((store_dir / "runs/t/ingest/report.json").read_bytes())
    assert rep["samples_out"] == len(raw) + len(ev) and rep["dropped"] == {}


def make_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes((40, 30)))
    (root / "a.txt").write_text("a red rectangle", encoding="utf-8")
    Image.new("RGB", (50, 50), (9, 9, 9)).save(root / "sub" / "b.jpg", quality=90)
    Image.new("RGB", (20, 20), (9, 99, 9)).save(root / "c.bmp")
    (root / "broken.png").write_bytes(png_bytes()[:40])
    (root / "text.jpg").write_bytes(b"not an image at all")
    (root / "notes.md").write_text("ignored")


def test_ingest_folder_with_sidecars_and_bad_files(store_dir: Path, make_env, tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    cfg = {"source": "folder", "path": str(tmp_path / "imgs"), "shard_size": 2}
    res = run_job("jobs.ingest", make_env(stage="ingest", kind="ingest", outputs=["raw"], config=cfg))
    assert res.returncode == 0, res.stderr
    got = {s.meta["source"]: s for s in read_set(store_dir, "raw")}
    assert sorted(got) == ["a.png", "c.bmp", "sub/b.jpg"]
    assert got["a.png"].meta["alt_text"] == "a red rectangle" and got["a.png"].image_ext == "png"
    assert got["sub/b.jpg"].image_ext == "jpg" and got["sub/b.jpg"].meta["alt_text"] == ""
    assert got["c.bmp"].image_ext == "png"  # re-encoded
    assert (got["a.png"].meta["width"], got["a.png"].meta["height"]) == (40, 30)
    rep = json.loads((store_dir / "runs/t/ingest/report.json").read_bytes())
    assert rep["dropped"] == {"not_an_image": 1, "truncated_image": 1}
    assert rep["samples_in"] == 5


def test_ingest_jsonl_and_csv_manifests(store_dir: Path, make_env, tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    jl = tmp_path / "m.jsonl"
    jl.write_bytes(b'{"image": "imgs/a.png", "alt_text": "red"}\n{broken\n{"alt_text": "no image"}\n'
                   b'{"image": "imgs/missing.png", "alt_text": "gone"}\n\xff\xfe\n'
                   b'{"image": "imgs/sub/b.jpg", "alt_text": "dark"}\n')
    res = run_job("jobs.ingest", make_env(stage="j", kind="ingest", outputs=["j"],
                                          config={"source": "jsonl", "path": str(jl)}))
    assert res.returncode == 0, res.stderr
    assert [s.meta["alt_text"] for s in read_set(store_dir, "j")] == ["red", "dark"]
    rep = json.loads((store_dir / "runs/t/j/report.json").read_bytes())
    assert rep["dropped"] == {"bad_manifest_line": 2, "missing_fields": 1, "missing_file": 1}
    cs = tmp_path / "m.csv"
    cs.write_text('image,alt_text\nimgs/a.png,"red, bright"\nimgs/text.jpg,bad\n', encoding="utf-8")
    res = run_job("jobs.ingest", make_env(stage="c", kind="ingest", outputs=["c"],
                                          config={"source": "csv", "path": str(cs)}))
    assert res.returncode == 0, res.stderr
    assert [s.meta["alt_text"] for s in read_set(store_dir, "c")] == ["red, bright"]
    cs.write_text("path,text\nimgs/a.png,x\n", encoding="utf-8")
    res = run_job("jobs.ingest", make_env(stage="c2", kind="ingest", outputs=["c2"],
                                          config={"source": "csv", "path": str(cs)}))
    assert res.returncode == 4 and "must have a 'image' column" in res.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sailk8s", "ingest", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_ingest_folder_and_errors(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    store = tmp_path / "st"
    res = cli("--folder", str(tmp_path / "imgs"), "--store", str(store), "--output", "data/raw")
    assert res.returncode == 0, res.stderr
    assert len(read_set(store, "data/raw")) == 3
    res = cli("--folder", str(tmp_path / "nope"), "--store", str(store), "--output", "x")
    assert res.returncode == 4 and "is not a folder" in res.stderr.strip().splitlines()[-1]
    res = cli("--store", str(store), "--output", "x")
    assert res.returncode == 2 and "choose exactly one source" in res.stderr
    res = cli("--samples", "--store", str(store), "--output", "x", "--shard-size", "0")
    assert res.returncode == 3 and "shard_size" in res.stderr


@pytest.mark.parametrize("bad", ["relative/path", "ftp://x"])
def test_cli_store_uri(bad: str) -> None:
    from sailk8s.cli.ingest import store_uri

    out = store_uri(bad)
    assert out == bad if "://" in bad else out.startswith("file:///")
