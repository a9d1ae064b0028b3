"""WebDataset tar shards (`<key>.jpg|png` + `<key>.json`): safe reading, deterministic writing,
guarded image decoding."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

# Why a sample is dropped while reading (image_too_small / bad_aspect_ratio are the filter stage's).
UNSAFE_MEMBER_NAME = "unsafe_member_name"  # absolute or with a '..' segment: never extracted
MISSING_JSON = "missing_json"
BAD_JSON = "bad_json"
JSON_NOT_UTF8 = "json_not_utf8"
JSON_NOT_OBJECT = "json_not_object"
MISSING_FIELDS = "missing_fields"  # a required json field is missing or empty
MISSING_IMAGE = "missing_image"  # no <key>.jpg|jpeg|png|webp
TRUNCATED_SHARD = "truncated_shard"  # the tar ends mid-member: one count for the samples lost
EMPTY_SHARD = "empty_shard"  # a zero-byte or member-less tar (shard-level, no samples)
DUPLICATE_KEY = "duplicate_key"  # a key seen earlier in the same shard: the first one wins
MEMBER_TOO_LARGE = "member_too_large"  # over MAX_MEMBER_BYTES: skipped without reading it
# ... and while decoding an image.
EMPTY_IMAGE = "empty_image"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
DECOMPRESSION_BOMB = "decompression_bomb"  # width * height over the cap, read from the header

# A single member above this is not a sample anyone meant to write (and would exhaust memory).
MAX_MEMBER_BYTES = 512 * 1024 * 1024

# Default cap on decoded pixels: well above any real photo tile, far below a bomb.
DEFAULT_MAX_PIXELS = 64_000_000


class BadSampleError(Exception):
    """A sample that cannot be used; `reason` is the funnel's name for it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One sample: its key, raw members by extension, and the parsed json (`meta`)."""

    key: str
    meta: dict[str, Any]
    image_ext: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    shard: str = ""  # the store key of the shard it was read from, where the reader knows it

    @property
    def image_bytes(self) -> bytes:
        """The raw encoded image ('' if the sample has none)."""
        return self.files.get(self.image_ext, b"") if self.image_ext else b""

    def decode(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """Decode the image (RGB) with the guards of `decode_image`."""
        return decode_image(self.image_bytes, max_pixels=max_pixels)


@dataclass(frozen=True)
class BadSample:
    """A sample dropped while reading, with its reason."""

    key: str
    reason: str
    detail: str = ""


def _safe_name(name: str) -> bool:
    """Member names are relative, without '..' segments or backslashes."""
    if not name or name.startswith("/") or "\\" in name or ":" in name.split("/", 1)[0]:
        return False
    return all(seg not in ("..",) for seg in name.split("/"))


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) the webdataset way: split at the first dot of the last segment."""
    dirname, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(dirname, stem) if dirname else stem
    return key, ext.lower() if dot else ""


def _parse_json(key: str, raw: bytes | None, required: Sequence[str]) -> dict[str, Any] | BadSample:
    if raw is None:
        return BadSample(key, MISSING_JSON)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadSample(key, JSON_NOT_UTF8, str(err))
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        return BadSample(key, BAD_JSON, str(err)[:200])
    if not isinstance(meta, dict):
        return BadSample(key, JSON_NOT_OBJECT, type(meta).__name__)
    missing = [f for f in required if meta.get(f) in (None, "")]
    if missing:
        return BadSample(key, MISSING_FIELDS, ", ".join(missing))
    return meta


def _assemble(key: str, files: dict[str, bytes], required: Sequence[str],
              need_image: bool) -> Sample | BadSample:
    meta = _parse_json(key, files.get("json"), required)
    if isinstance(meta, BadSample):
        return meta
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if image_ext is None and need_image:
        return BadSample(key, MISSING_IMAGE)
    return Sample(key=key, meta=meta, image_ext=image_ext, files=files)


def read_shard(source: str | Path | IO[bytes], *, required: Sequence[str] = (),
               need_image: bool = True) -> Iterator[Sample | BadSample]:
    """Yield every sample of a tar shard in member order; bad ones as BadSample.

    Members sharing a key form one sample, the key being the member name up to the first dot of
    its last path segment (as img2dataset and webdataset write them). tarfile is used directly
    because hostile input must not stop the shard: never raises for bad content; a tar that stops
    mid-way yields what came before it plus one `truncated_shard`; a zero-byte or member-less tar
    yields one `empty_shard` (key '').
    """
    fileobj: IO[bytes]
    if isinstance(source, (str, Path)):
        fileobj = open(source, "rb")  # noqa: SIM115 - closed below
        close = True
    else:
        fileobj, close = source, False
    try:
        cut = False
        for item in _read_tar(fileobj, required, need_image):
            cut = cut or (isinstance(item, BadSample) and item.reason in (TRUNCATED_SHARD, EMPTY_SHARD))
            yield item
        if not cut and not _has_end_marker(fileobj):
            # tarfile takes a cut between members for the end; the missing zero blocks tell.
            yield BadSample("", TRUNCATED_SHARD, "no end-of-archive marker")
    finally:
        if close:
            fileobj.close()


def _has_end_marker(fileobj: IO[bytes]) -> bool:
    """Whether a seekable tar ends with the two zero blocks every writer appends."""
    try:
        size = fileobj.seek(0, 2)
        if size % 512 or size < 1024:
            return False
        fileobj.seek(size - 1024)
        return fileobj.read(1024) == bytes(1024)
    except (OSError, ValueError):
        return True  # not seekable: nothing to check


def _read_tar(fileobj: IO[bytes], required: Sequence[str],
              need_image: bool) -> Iterator[Sample | BadSample]:
    current: str | None = None
    files: dict[str, bytes] = {}
    unsafe = too_large = False  # flags of the current sample's members
    seen_any = False
    seen_keys: set[str] = set()

    def finish() -> Sample | BadSample:
        assert current is not None
        if unsafe:  # never extracted; one count per sample, not per member
            return BadSample(current, UNSAFE_MEMBER_NAME)
        if current in seen_keys:  # members of one key split apart: keep the first sample only
            return BadSample(current, DUPLICATE_KEY)
        seen_keys.add(current)
        if too_large:
            return BadSample(current, MEMBER_TOO_LARGE)
        return _assemble(current, files, required, need_image)

    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*")  # noqa: SIM115 - closed in finally
    except tarfile.ReadError as err:
        # An empty file is not a valid tar to tarfile; say "empty" rather than "corrupt".
        yield BadSample("", EMPTY_SHARD if "empty" in str(err) else TRUNCATED_SHARD, str(err))
        return
    try:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError) as err:
                if current is not None:
                    yield finish()
                    current = None
                yield BadSample("", TRUNCATED_SHARD, str(err))
                return
            if member is None:
                break
            seen_any = True
            if not member.isfile():
                continue  # directories, links, devices: never followed or extracted
            key, ext = split_member(member.name)
            if key != current:
                if current is not None:
                    yield finish()
                current, files, unsafe, too_large = key, {}, False, False
            if not _safe_name(member.name):
                unsafe = True
                continue
            if member.size > MAX_MEMBER_BYTES:
                too_large = True
                continue
            try:
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"member {member.name} truncated")
            except (tarfile.TarError, OSError, EOFError) as err:
                # The tar ends inside this member: the sample it belongs to is lost.
                yield BadSample(key, TRUNCATED_SHARD, str(err))
                return
            files[ext] = data
        if current is not None:
            yield finish()
        if not seen_any:
            yield BadSample("", EMPTY_SHARD, "no members")
    finally:
        tar.close()


_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"RIFF")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to RGB, raising BadSampleError with a named reason for unusable bytes.

    The size in the header is checked before any pixel is decoded, so a 100k x 100k PNG of
    a few KiB costs nothing.
    """
    if not data:
        raise BadSampleError(EMPTY_IMAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            orientation = header_orientation(img)
            w, h = img.size
            if w <= 0 or h <= 0 or w * h > max_pixels:
                raise BadSampleError(DECOMPRESSION_BOMB, f"{w}x{h}")
            img.load()
    except BadSampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSampleError(DECOMPRESSION_BOMB, str(err)) from None
    except UnidentifiedImageError as err:
        # A known image signature that PIL cannot parse is a cut-off file, not a non-image.
        reason = TRUNCATED_IMAGE if data.startswith(_MAGIC) else NOT_AN_IMAGE
        raise BadSampleError(reason, str(err).split(" <")[0]) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        msg = str(err)
        reason = TRUNCATED_IMAGE if ("truncated" in msg or "broken" in msg or isinstance(err, EOFError)) \
            else NOT_AN_IMAGE
        raise BadSampleError(reason, msg) from None
    return to_rgb(img, orientation)


def to_rgb(img: Image.Image, orientation: int | None = None) -> Image.Image:
    """The picture as a viewer shows it, in 8-bit RGB: EXIF `orientation` applied, 16-bit grey
    scaled down (not clipped to white), transparency flattened onto white (not onto whatever the
    hidden colour channels hold)."""
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        hi = img.getextrema()[1]
        scale = 1 / 256 if img.mode.startswith("I;16") or (isinstance(hi, (int, float)) and hi > 255) else 1.0
        img = img.convert("I").point(lambda v: v * scale).convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
        flat.alpha_composite(img.convert("RGBA"))
        img = flat
    return img if img.mode == "RGB" else img.convert("RGB")


_ORIENTATION = 0x0112  # the EXIF tag
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def header_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation known from the header alone (JPEG APP1, a PNG eXIf before the pixels);
    never decodes pixels, so the training planner and the decoder agree at the same cost."""
    raw = img.info.get("exif")
    if not isinstance(raw, bytes) or not raw:
        return None
    exif = Image.Exif()
    try:
        exif.load(raw)
    except Exception:  # a malformed EXIF block is ignored, as viewers do
        return None
    value = exif.get(_ORIENTATION)
    return value if isinstance(value, int) else None


def shown_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as `decode_image` gives them, from the header: orientations 5-8 swap them."""
    w, h = img.size
    return (h, w) if header_orientation(img) in (5, 6, 7, 8) else (w, h)


def encode_image(img: Image.Image, fmt: str = "png", quality: int = 90) -> bytes:
    """Encode a PIL image as png or jpg bytes."""
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class ShardWriter:
    """Write samples to one local tar deterministically (fixed metadata, write order).

    Identical samples give byte-identical tars, so a rerun of a killed stage yields the same sha256.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - close()
        self._keys: set[str] = set()
        self.count = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        """Add a sample: its image member (if any), other raw members, then its json."""
        if not _safe_name(sample.key) or "." in posixpath.basename(sample.key):
            raise ValueError(f"unsafe or dotted sample key {sample.key!r}")
        if sample.key in self._keys:
            raise ValueError(f"duplicate sample key {sample.key!r} in {self.path.name}")
        self._keys.add(sample.key)
        for ext, data in sample.files.items():
            if ext != "json":
                self._add(f"{sample.key}.{ext}", data)
        meta = json.dumps(sample.meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        self._add(f"{sample.key}.json", meta.encode("utf-8"))
        self.count += 1

    def write_all(self, samples: Iterable[Sample]) -> None:
        """Write several samples."""
        for s in samples:
            self.write(s)

    def close(self) -> None:
        """Finish the tar (end-of-archive blocks)."""
        self._tar.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a local file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_name(index: int) -> str:
    """The canonical shard file name: shard-000042.tar."""
    return f"shard-{index:06d}.tar"
