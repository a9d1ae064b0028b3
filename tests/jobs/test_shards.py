"""Shard reading/writing and the bad-input corpus: every bad sample is named, none crash."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from jobs_helpers import png_bytes, raw_tar
from PIL import Image

from jobs.core import shards as sh


def meta(**kw: object) -> bytes:
    return json.dumps({"alt_text": "a red square", **kw}).encode()


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buf, format="PNG")  # ~100 KB on disk, 900 Mpx decoded
    return buf.getvalue()


def results(path: Path, **kw: object) -> list[tuple[str, str | None]]:
    out = []
    for item in sh.read_shard(path, **kw):  # type: ignore[arg-type]
        if isinstance(item, sh.BadSample):
            out.append((item.key, item.reason))
        else:
            try:
                item.decode(max_pixels=10_000_000)
                out.append((item.key, None))
            except sh.BadSampleError as err:
                out.append((item.key, err.reason))
    return out


def test_bad_input_corpus_each_named_and_good_samples_survive(tmp_path: Path) -> None:
    good = png_bytes()
    path = raw_tar(tmp_path / "bad.tar", [
        ("ok1.png", good), ("ok1.json", meta()),
        ("../escape.png", good), ("../escape.json", meta()),
        ("/abs/x.png", good), ("/abs/x.json", meta()),
        ("zero.png", b""), ("zero.json", meta()),
        ("trunc.png", good[: len(good) // 2]), ("trunc.json", meta()),
        ("text.png", b"this is not an image"), ("text.json", meta()),
        ("bomb.png", bomb_png()), ("bomb.json", meta()),
        ("latin.png", good), ("latin.json", "caf\xe9".encode("latin-1")),
        ("broken.png", good), ("broken.json", b"{not json"),
        ("list.png", good), ("list.json", b"[1, 2]"),
        ("nofield.png", good), ("nofield.json", b'{"source": "x"}'),
        ("noimg.json", meta()),
        ("nojson.png", good),
        ("ok2.png", good), ("ok2.json", meta()),
    ])
    got = results(path, required=("alt_text",))
    assert got == [
        ("ok1", None),
        ("../escape", sh.UNSAFE_MEMBER_NAME),
        ("/abs/x", sh.UNSAFE_MEMBER_NAME),
        ("zero", sh.EMPTY_IMAGE), ("trunc", sh.TRUNCATED_IMAGE), ("text", sh.NOT_AN_IMAGE),
        ("bomb", sh.DECOMPRESSION_BOMB), ("latin", sh.JSON_NOT_UTF8), ("broken", sh.BAD_JSON),
        ("list", sh.JSON_NOT_OBJECT), ("nofield", sh.MISSING_FIELDS), ("noimg", sh.MISSING_IMAGE),
        ("nojson", sh.MISSING_JSON), ("ok2", None),
    ]
    assert not (tmp_path.parent / "escape.png").exists()


def test_empty_and_zero_byte_shards(tmp_path: Path) -> None:
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    assert results(zero) == [("", sh.EMPTY_SHARD)]
    assert results(raw_tar(tmp_path / "empty.tar", [])) == [("", sh.EMPTY_SHARD)]


def test_truncated_tar_keeps_samples_before_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "full.tar"
    with sh.ShardWriter(path) as w:
        for i in range(4):
            w.write(sh.Sample(f"k{i}", {"alt_text": "x"}, "png", {"png": png_bytes()}))
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 3000, 700):
        p = tmp_path / f"cut{cut}.tar"
        p.write_bytes(data[:cut])
        got = results(p)
        good = [k for k, r in got if r is None]
        assert got[-1][1] == sh.TRUNCATED_SHARD
        assert good == [f"k{i}" for i in range(len(good))]  # every sample before the cut survives
        assert len(good) < 4


def test_writer_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    samples = [sh.Sample(f"s{i}", {"alt_text": f"t{i}", "n": i}, "png", {"png": png_bytes()})
               for i in range(3)]
    for name in ("a.tar", "b.tar"):
        with sh.ShardWriter(tmp_path / name) as w:
            w.write_all(samples)
    assert sh.file_sha256(tmp_path / "a.tar") == sh.file_sha256(tmp_path / "b.tar")
    back = [s for s in sh.read_shard(tmp_path / "a.tar") if isinstance(s, sh.Sample)]
    assert [(s.key, s.meta, s.image_bytes) for s in back] == [(s.key, s.meta, s.image_bytes) for s in samples]


def test_writer_rejects_unsafe_or_duplicate_keys(tmp_path: Path) -> None:
    with sh.ShardWriter(tmp_path / "w.tar") as w:
        w.write(sh.Sample("a", {}, None, {}))
        for bad in ("a", "../x", "/x", "a.b"):
            with pytest.raises(ValueError):
                w.write(sh.Sample(bad, {}, None, {}))


def test_webdataset_reads_our_shards(tmp_path: Path) -> None:
    import webdataset as wds

    with sh.ShardWriter(tmp_path / "w.tar") as w:
        w.write(sh.Sample("a", {"alt_text": "x"}, "png", {"png": png_bytes()}))
    rows = list(wds.WebDataset(str(tmp_path / "w.tar"), shardshuffle=False).decode("pil"))
    assert rows[0]["__key__"] == "a" and rows[0]["json"]["alt_text"] == "x"
    assert rows[0]["png"].size == (48, 48)


def test_split_member_follows_webdataset() -> None:
    assert sh.split_member("dir/abc.seg.json") == ("dir/abc", "seg.json")
    assert sh.split_member("x.PNG") == ("x", "png")


def test_deep_json_split_keys_and_oversized_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = png_bytes()
    monkeypatch.setattr(sh, "MAX_MEMBER_BYTES", 1_000_000)
    path = raw_tar(tmp_path / "odd.tar", [
        ("a.png", good), ("a.json", meta()),
        ("deep.png", good), ("deep.json", b"[" * 200_000 + b"]" * 200_000),
        ("big.png", bytes(1_500_000)), ("big.json", meta()),
        ("a.json", meta(again=True)),  # key "a" again, after other samples
        ("b.png", good), ("b.json", meta()),
    ])
    assert results(path) == [("a", None), ("deep", sh.BAD_JSON), ("big", sh.MEMBER_TOO_LARGE),
                             ("a", sh.DUPLICATE_KEY), ("b", None)]


def _encoded(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    """40x20 pixels stored, EXIF orientation 6: a viewer shows 20x40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    img.paste((0, 0, 200), (0, 0, 20, 20))  # the stored left half blue: on top once rotated
    return _encoded(img, "JPEG", exif=exif.tobytes(), quality=95)


def _grey16() -> bytes:
    img = Image.new("I;16", (64, 4))
    img.putdata([(x * 1024) for _ in range(4) for x in range(64)])  # 0 .. 64512 left to right
    return _encoded(img)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (4, 0, 8, 8))  # the right half red, the left half transparent index 0
    return _encoded(img, transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


IMAGE_KINDS = [  # kind, encoded bytes, shown size, (x, y) -> RGB as a viewer shows the picture
    ("exif-rotated jpeg", _rotated_jpeg(), (20, 40), {(10, 5): "blue", (10, 35): "red"}),
    ("16-bit grey png", _grey16(), (64, 4), {(0, 0): (0, 0, 0), (32, 0): (128, 128, 128)}),
    ("palette with transparency", _palette_with_transparency(), (8, 8),
     {(1, 1): (255, 255, 255), (6, 1): (255, 0, 0)}),
    ("transparent rgba", _encoded(Image.new("RGBA", (8, 8), (10, 20, 30, 0))), (8, 8),
     {(0, 0): (255, 255, 255)}),
    ("cmyk jpeg", _encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), (8, 8),
     {(4, 4): "red"}),
    ("animated gif: its first frame", _animated_gif(), (8, 8), {(4, 4): (255, 0, 0)}),
    ("1x1", _encoded(Image.new("RGB", (1, 1), (0, 255, 0))), (1, 1), {(0, 0): (0, 255, 0)}),
    ("absurd aspect ratio", _encoded(Image.new("L", (4000, 1), 9)), (4000, 1), {(3999, 0): (9, 9, 9)}),
]


@pytest.mark.parametrize(("kind", "data", "size", "pixels"), IMAGE_KINDS, ids=[k[0] for k in IMAGE_KINDS])
def test_image_kinds_decode_as_a_viewer_shows_them(kind: str, data: bytes, size: tuple[int, int],
                                                   pixels: dict[tuple[int, int], object]) -> None:
    """8-bit RGB, orientation applied, 16-bit scaled (not clipped white), transparency on white;
    the header-only size the training planner uses agrees with the decoded one."""
    from jobs.training.encoding import probe_image

    img = sh.decode_image(data)
    assert (img.mode, img.size, probe_image(data)) == ("RGB", size, size), kind
    for xy, want in pixels.items():
        r, g, b = img.getpixel(xy)  # type: ignore[misc]
        if want == "red":
            assert r > 180 and g < 60 and b < 60, (kind, xy, (r, g, b))
        elif want == "blue":
            assert b > 180 and r < 60 and g < 60, (kind, xy, (r, g, b))
        else:
            assert all(abs(c - w) <= 2 for c, w in zip((r, g, b), want, strict=True)), (kind, xy, (r, g, b))  # type: ignore[call-overload]


def test_a_gzip_that_is_not_a_tar_is_a_named_bad_shard(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "shard.tar"
    path.write_bytes(gzip.compress(b"hello, not a tar archive" * 100))
    assert results(path) == [("", sh.TRUNCATED_SHARD)]


def test_symlink_members_are_never_followed_and_odd_text_is_kept(tmp_path: Path) -> None:
    """A symlink member (here to /etc/passwd) is skipped, so its sample has no image; NUL bytes,
    right-to-left and combining marks in an alt-text are text like any other."""
    import tarfile

    good = png_bytes()
    odd = "a cat \u202eeman\u202c on a caf\u0065\u0301 roof\x00"
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("ok.png", good), ("ok.json", json.dumps({"alt_text": odd}).encode()),
                           ("link.json", meta())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    items = list(sh.read_shard(path, required=("alt_text",)))
    assert [(i.key, getattr(i, "reason", None)) for i in items] == [("ok", None), ("link", sh.MISSING_IMAGE)]
    assert isinstance(items[0], sh.Sample) and items[0].meta["alt_text"] == odd
