"""Snapshots: a JPEG of the zone (or frame) that started an event, to MQTT and/or a directory.

JPEG encoding and disk writes run on their own thread behind a bounded queue, so a slow
disk never stalls the inference thread. When the queue is full the *oldest* pending
snapshot is dropped and counted (``dropped_oldest``): the newest picture is the one a
person wants to see; the pending pictures are also bounded in bytes (``max_queued_mib``).
The directory keeps at most ``max_files`` ``.jpg`` files; the oldest are deleted as new ones
arrive, so a chatty camera cannot fill the disk.

A disk that fills up or a directory that is deleted must not flood the log nor stop the MQTT
snapshots: a failed write removes its temporary file, each cause is logged once (again at most
every ``_REPEAT_LOG_S`` while it lasts, with a count), and a vanished directory is made again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from streamclf.bounded_queue import BoundedQueue, OverflowPolicy
from streamclf.config import SnapshotConfig
from streamclf.workers import Workers

log = logging.getLogger(__name__)

_REPEAT_LOG_S = 300.0  # a disk problem that lasts is logged again this often (seconds), with a count


def snapshot_size(width: int, height: int, want_width: int | None, want_height: int | None) -> tuple[int, int]:
    """Output (width, height) in pixels: both set -> exactly that; one set -> the other keeps the aspect."""
    if want_width and want_height:
        return want_width, want_height
    if want_width:
        return want_width, max(1, round(height * want_width / width))
    if want_height:
        return max(1, round(width * want_height / height)), want_height
    return width, height


def encode_jpeg(image: np.ndarray, cfg: SnapshotConfig) -> bytes:
    """JPEG bytes of a BGR uint8 image (a frame as decoded).

    Resized to the configured size (pixels), at the configured quality (1..100).
    """
    h, w = image.shape[:2]
    out_w, out_h = snapshot_size(w, h, cfg.width, cfg.height)
    if (out_w, out_h) != (w, h):
        shrinking = out_w * out_h < w * h
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


@dataclass(frozen=True)
class SnapshotRequest:
    """One snapshot to take: the image, the MQTT topic (None: no MQTT) and a file name stem."""

    image: np.ndarray
    topic: str | None
    file_stem: str


class SnapshotWriter:
    """Encodes and delivers snapshots on its own thread; ``submit`` never blocks.

    At most ``queue_size`` snapshots wait to be encoded; beyond that the oldest is dropped.
    """

    def __init__(self, cfg: SnapshotConfig, publish_retained: Callable[[str, bytes], None],
                 base_dir: str | None = None, queue_size: int = 16, workers: Workers | None = None):
        self.cfg = cfg
        self._publish_retained = publish_retained
        self.directory: Path | None = None
        if cfg.directory:
            d = Path(cfg.directory).expanduser()
            self.directory = d if d.is_absolute() or base_dir is None else Path(base_dir) / d
        # The newest picture is the one a person wants to see; a burst of events must not flood the log.
        self._pending: BoundedQueue[SnapshotRequest] = BoundedQueue(
            queue_size, OverflowPolicy.DROP_OLDEST, logger=log,
            warning="snapshot queue full; dropping the oldest pending snapshots, %(dropped)d so far",
        )
        self._max_pending_bytes = cfg.max_queued_mib * 1024 * 1024
        self._files: deque[Path] = deque()  # written files, oldest first, for the max_files bound
        self.written = 0
        self.published = 0
        self.failed = 0
        self._dropped_for_bytes = 0
        self._disk_problem: tuple[str, float, int] | None = None  # (cause, logged at monotonic, failures since)
        # Guarded: a loop that dies is logged and makes the process unhealthy (streamclf/workers.py).
        self._thread = (workers if workers is not None else Workers()).thread(self._run, "snapshots")

    def start(self) -> None:
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                # Files of earlier runs count towards the bound too, oldest first.
                existing = sorted(self.directory.glob("*.jpg"), key=lambda p: (p.stat().st_mtime, p.name))
                self._files.extend(existing)
                self._prune()
            except OSError as exc:
                log.error("snapshot directory %s is unusable (%s); snapshots go to MQTT only", self.directory, exc)
                self.directory = None
        self._thread.start()

    @property
    def dropped_oldest(self) -> int:
        """Snapshots dropped unsent because the queue was full, since start."""
        return self._pending.dropped + self._dropped_for_bytes

    @property
    def pending(self) -> int:
        """Snapshots waiting to be encoded and delivered."""
        return len(self._pending)

    def submit(self, request: SnapshotRequest) -> None:
        """Queue a snapshot; never blocks. A full queue, in count or bytes, drops its oldest pending snapshots."""
        self._pending.put(request)
        # The writer thread may take items meanwhile; the newest (ours) is never dropped for bytes.
        while len(queued := self._pending.items()) > 1 and _image_bytes(queued) > self._max_pending_bytes:
            try:
                self._pending.popleft()
            except IndexError:
                break
            self._dropped_for_bytes += 1

    def _run(self) -> None:
        while (request := self._pending.get()) is not None:  # None: stopped and everything delivered
            try:
                self._deliver(request)
            except Exception:  # a bad snapshot is logged; events and the next snapshots go on
                self.failed += 1
                log.exception("snapshot %s failed", request.file_stem)

    def _deliver(self, request: SnapshotRequest) -> None:
        jpeg = encode_jpeg(request.image, self.cfg)
        if request.topic is not None:
            self._publish_retained(request.topic, jpeg)
            self.published += 1
        if self.directory is not None:
            try:
                path = self._write_file(self.directory, request.file_stem, jpeg)
            except OSError as exc:
                self.failed += 1
                self._disk_failed(exc)
                return
            self._disk_ok()
            self._files.append(path)
            self.written += 1
            self._prune()

    def _write_file(self, directory: Path, stem: str, jpeg: bytes) -> Path:
        """Write ``jpeg`` as ``<stem>.jpg`` (never over an existing file); makes the directory again if it vanished."""
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            log.warning("snapshot directory %s had vanished; made again", directory)
        path = directory / f"{stem}.jpg"
        n = 1
        while path.exists():  # two snapshots of one event within a millisecond: never overwrite
            path = directory / f"{stem}-{n}.jpg"
            n += 1
        tmp = path.with_suffix(".jpg.tmp")  # readers never see half a file
        try:
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a half-written file would hold the space and escape max_files
            raise
        return path

    def _disk_failed(self, exc: OSError) -> None:
        """Log a write failure once per cause, and again at most every ``_REPEAT_LOG_S`` seconds while it lasts."""
        cause = f"{exc.strerror or type(exc).__name__}" if exc.errno else str(exc)
        now = time.monotonic()
        previous = self._disk_problem
        if previous is not None and previous[0] == cause and now - previous[1] < _REPEAT_LOG_S:
            self._disk_problem = (cause, previous[1], previous[2] + 1)
            return
        if previous is not None and previous[0] == cause:
            log.warning("snapshot directory %s: still cannot write (%s); %d snapshot(s) not saved since the last "
                        "report (MQTT snapshots go on)", self.directory, cause, previous[2] + 1)
        else:
            log.warning("snapshot directory %s: cannot write (%s); snapshots are not saved to disk until it "
                        "recovers (MQTT snapshots go on)", self.directory, cause)
        self._disk_problem = (cause, now, 0)

    def _disk_ok(self) -> None:
        if self._disk_problem is not None:
            log.info("snapshot directory %s: writing again", self.directory)
            self._disk_problem = None

    def _prune(self) -> None:
        while len(self._files) > self.cfg.max_files:
            old = self._files.popleft()
            try:
                old.unlink()
            except FileNotFoundError:
                pass

    def stop(self, timeout_s: float = 1.0) -> None:
        """Deliver what is pending for up to ``timeout_s`` seconds, then stop the thread."""
        deadline = time.monotonic() + timeout_s
        self._pending.close()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        undelivered = self._pending.clear()
        if undelivered:
            log.warning("%d snapshot(s) not delivered at shutdown", undelivered)


def _image_bytes(requests: list[SnapshotRequest]) -> int:
    return sum(r.image.nbytes for r in requests)
