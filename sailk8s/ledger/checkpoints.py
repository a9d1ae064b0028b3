"""Checkpoints in the store: files, then manifest.json (sha256 + size), then the LATEST pointer."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sailk8s.errors import ObjectNotFound, StoreError, StoreKeyError
from sailk8s.ledger.digest import sha256_file
from sailk8s.ledger.paths import StagePaths, ckpt_dir_name, parse_ckpt_dir_name
from sailk8s.store.base import ObjectStore, validate_key

log = structlog.get_logger(__name__)

MANIFEST = "manifest.json"


class FileEntry(BaseModel):
    """One checkpoint file in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    """`manifest.json`: uploaded last, so its presence means every file is there."""

    model_config = ConfigDict(extra="allow", frozen=True)

    step: int = Field(ge=0)
    files: dict[str, FileEntry]
    time: float  # epoch seconds when the upload completed


class CorruptCheckpoint(StoreError):
    """A checkpoint is partial or a file does not match its manifest."""


class CheckpointLedger:
    """Upload, list, prune and restore the checkpoints of one stage (runs/<run>/<stage>/ckpt/)."""

    def __init__(self, store: ObjectStore, run: str, stage: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.paths = StagePaths(run, stage)
        self._clock = clock

    # -- writing ----------------------------------------------------------------------------
    def save(self, local_dir: str | os.PathLike[str], step: int, *,
             keep_latest_k: int | None = None) -> Manifest:
        """Upload every file under local_dir as step-NNNNNNNN, then the manifest, then LATEST.

        A crash at any point leaves either the previous LATEST or the new one, never a pointer
        to a partial checkpoint. With keep_latest_k, older checkpoints are pruned afterwards.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise StoreError(f"checkpoint directory {os.fspath(local_dir)!r} does not exist")
        prefix = self.paths.ckpt_dir(step)
        files: dict[str, FileEntry] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST:
                raise StoreKeyError(f"checkpoint file {rel!r} in {root}: the name {MANIFEST!r} is reserved")
            key = validate_key(f"{prefix}/{rel}")
            digest = sha256_file(path)
            self.store.put_file(key, path)
            files[rel] = FileEntry(sha256=digest, size=path.stat().st_size)
        if not files:
            raise StoreError(f"checkpoint directory {root} is empty: nothing to save for step {step}")
        manifest = Manifest(step=step, files=files, time=self._clock())
        self.store.put(self.paths.ckpt_manifest(step), manifest.model_dump_json(indent=1).encode())
        self.store.put(self.paths.ckpt_latest, ckpt_dir_name(step).encode())
        log.info("checkpoint saved", stage=self.paths.stage, step=step, files=len(files),
                 bytes=sum(f.size for f in files.values()))
        if keep_latest_k is not None:
            self.keep_latest_k(keep_latest_k)
        return manifest

    def keep_latest_k(self, k: int) -> list[int]:
        """Delete all but the k newest complete checkpoints; never the one LATEST names.

        Partial checkpoints older than the newest complete one are debris of a crash and go
        too; a partial one newer than that may be uploading right now, so it stays.
        Returns the deleted steps.
        """
        if k < 1:
            raise ValueError(f"keep_latest_k needs k >= 1, got {k}")
        listing = self._listing()
        complete = sorted((s for s, keys in listing.items() if MANIFEST in keys), reverse=True)
        keep = set(complete[:k])
        latest = self._read_latest()
        if latest is not None:
            keep.add(latest)
        newest = complete[0] if complete else -1
        doomed = [s for s in sorted(listing) if s not in keep and (s in complete or s < newest)]
        for step in doomed:
            keys = listing[step]
            # Manifest first: a half-deleted checkpoint then reads as partial, never as valid.
            if MANIFEST in keys:
                self.store.delete(self.paths.ckpt_manifest(step))
            for rel in sorted(keys - {MANIFEST}):
                self.store.delete(f"{self.paths.ckpt_dir(step)}/{rel}")
        if doomed:
            log.info("old checkpoints deleted", stage=self.paths.stage, steps=doomed)
        return doomed

    # -- reading ----------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps that have a manifest (one listing), ascending. Files are not verified here."""
        return sorted(s for s, keys in self._listing().items() if MANIFEST in keys)

    def latest(self) -> int | None:
        """The step LATEST names if its manifest exists, else the newest step with a manifest."""
        complete = self.steps()
        latest = self._read_latest()
        if latest is not None and latest in complete:
            return latest
        if latest is not None:
            log.warning("LATEST names a checkpoint without a manifest; using the newest complete one",
                        stage=self.paths.stage, latest=latest)
        return complete[-1] if complete else None

    def manifest(self, step: int) -> Manifest:
        """The manifest of a step; CorruptCheckpoint if missing or unreadable."""
        try:
            raw = self.store.get(self.paths.ckpt_manifest(step))
        except ObjectNotFound:
            raise CorruptCheckpoint(f"checkpoint step {step} of stage {self.paths.stage!r} is partial: "
                                    "no manifest") from None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as err:
            raise CorruptCheckpoint(f"checkpoint step {step}: unreadable manifest: "
                                    f"{str(err).splitlines()[0]}") from None
        if manifest.step != step:
            raise CorruptCheckpoint(f"checkpoint step {step}: its manifest says step {manifest.step}")
        return manifest

    def load(self, local_dir: str | os.PathLike[str], step: int | None = None) -> int | None:
        """Download and verify a checkpoint into local_dir; returns its step, None if none is valid.

        Starts at `step` (default: latest()) and falls back to older complete checkpoints, with a
        warning, when one is corrupt or partial. local_dir is replaced only by a verified copy.
        """
        complete = self.steps()
        first = self.latest() if step is None else step
        if first is None:
            return None
        candidates = [first] + [s for s in reversed(complete) if s < first]
        for candidate in candidates:
            try:
                self._download_verified(candidate, Path(local_dir))
                return candidate
            except CorruptCheckpoint as err:
                log.warning("checkpoint unusable; falling back to the previous one",
                            stage=self.paths.stage, step=candidate, reason=str(err))
        return None

    # -- helpers ----------------------------------------------------------------------------
    def _listing(self) -> dict[int, set[str]]:
        """step -> relative file names, from one listing of ckpt/."""
        out: dict[int, set[str]] = {}
        prefix = self.paths.ckpt_prefix
        for key in self.store.list(prefix):
            name, _, rel = key[len(prefix):].partition("/")
            step = parse_ckpt_dir_name(name)
            if step is not None and rel:
                out.setdefault(step, set()).add(rel)
        return out

    def _read_latest(self) -> int | None:
        try:
            raw = self.store.get(self.paths.ckpt_latest)
        except ObjectNotFound:
            return None
        step = parse_ckpt_dir_name(raw.decode("utf-8", "replace").strip())
        if step is None:
            log.warning("ignoring unreadable LATEST pointer", stage=self.paths.stage, content=raw[:40])
        return step

    def _download_verified(self, step: int, target: Path) -> None:
        """Fetch a step into a temp dir beside target, check sizes and sha256s, then swap it in."""
        manifest = self.manifest(step)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for rel, entry in sorted(manifest.files.items()):
                dest = tmp / rel
                try:
                    self.store.get_file(validate_key(f"{self.paths.ckpt_dir(step)}/{rel}"), dest)
                except ObjectNotFound:
                    raise CorruptCheckpoint(f"checkpoint step {step}: file {rel!r} is missing") from None
                size = dest.stat().st_size
                if size != entry.size or sha256_file(dest) != entry.sha256:
                    raise CorruptCheckpoint(f"checkpoint step {step}: file {rel!r} does not match its "
                                            f"manifest (size {size}, expected {entry.size})")
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                target.rename(old / "x")
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
