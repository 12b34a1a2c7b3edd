"""Snapshots: JPEG of the stated size and quality; the directory never holds more than max_files."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from streamclf.config import SnapshotConfig
from streamclf.snapshots import SnapshotRequest, SnapshotWriter, encode_jpeg, snapshot_size


@pytest.mark.parametrize(
    "size, width, height, expected",
    [
        ((320, 240), None, None, (320, 240)),
        ((320, 240), 160, None, (160, 120)),
        ((320, 240), None, 60, (80, 60)),
        ((160, 240), None, 120, (80, 120)),
        ((320, 240), 100, 100, (100, 100)),  # both given: exactly that
        ((50, 40), 200, None, (200, 160)),  # enlarging too: the size is what was asked for
    ],
)
def test_snapshot_size(size, width, height, expected):
    assert snapshot_size(*size, width, height) == expected


def test_jpeg_decodes_to_the_stated_size_and_colour():
    image = np.zeros((240, 320, 3), np.uint8)
    image[:] = (20, 20, 220)  # red, in the BGR order frames are decoded in
    jpeg = encode_jpeg(image, SnapshotConfig(height=60, quality=90))
    assert jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # BGR
    assert decoded.shape == (60, 80, 3)
    assert decoded[..., 2].mean() > 200 and decoded[..., 0].mean() < 40
    small = encode_jpeg(np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8), SnapshotConfig(quality=10))
    large = encode_jpeg(np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8), SnapshotConfig(quality=95))
    assert len(small) < len(large)


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_directory_keeps_at_most_max_files_counting_earlier_runs(tmp_path):
    old = tmp_path / "snaps" / "0-earlier-run.jpg"
    old.parent.mkdir()
    old.write_bytes(b"old")
    os.utime(old, (1, 1))
    other = tmp_path / "snaps" / "notes.txt"  # not ours: never touched
    other.write_text("keep")
    published = []
    writer = SnapshotWriter(SnapshotConfig(directory="snaps", max_files=3, width=32),
                            lambda topic, jpeg: published.append((topic, jpeg)), base_dir=str(tmp_path))
    writer.start()
    image = np.full((40, 40, 3), 128, np.uint8)
    for i in range(5):
        writer.submit(SnapshotRequest(image, "p/cam/person/snapshot" if i % 2 == 0 else None, f"snap-{i}"))
    _wait(lambda: writer.written == 5)
    writer.stop()
    assert sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg")) == ["snap-2.jpg", "snap-3.jpg", "snap-4.jpg"]
    assert other.read_text() == "keep"
    assert not list((tmp_path / "snaps").glob("*.tmp"))
    assert [t for t, _ in published] == ["p/cam/person/snapshot"] * 3 and writer.published == 3
    decoded = cv2.imdecode(np.frombuffer((tmp_path / "snaps" / "snap-4.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (32, 32, 3)


def test_a_full_queue_drops_the_oldest_and_a_failure_stays_local(tmp_path):
    delivered = []
    gate = []

    def slow_publish(topic, jpeg):
        _wait(lambda: gate, timeout=10)
        delivered.append(topic)

    writer = SnapshotWriter(SnapshotConfig(), slow_publish, queue_size=2)
    writer.start()
    image = np.zeros((8, 8, 3), np.uint8)
    writer.submit(SnapshotRequest(image, "t/0", "s0"))  # taken by the thread, blocks in publish
    _wait(lambda: not writer.pending)
    for i in range(1, 4):
        writer.submit(SnapshotRequest(image, f"t/{i}", f"s{i}"))
    assert writer.dropped_oldest == 1
    gate.append(True)
    _wait(lambda: len(delivered) == 3)
    writer.submit(SnapshotRequest(np.zeros((0, 8, 3), np.uint8), "t/bad", "bad"))  # cannot be encoded
    writer.submit(SnapshotRequest(image, "t/4", "s4"))
    _wait(lambda: len(delivered) == 4)
    writer.stop()
    assert delivered == ["t/0", "t/2", "t/3", "t/4"] and writer.failed == 1


def test_the_same_file_stem_twice_makes_two_files(tmp_path):
    writer = SnapshotWriter(SnapshotConfig(directory=str(tmp_path), max_files=5), lambda t, j: None)
    writer.start()
    for _ in range(3):
        writer.submit(SnapshotRequest(np.zeros((8, 8, 3), np.uint8), None, "same"))
    _wait(lambda: writer.written == 3)
    writer.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same-1.jpg", "same-2.jpg", "same.jpg"]


# --------------------------------------------------------------------------- a full or vanished disk
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (root only), so writes fail with the kernel's own ENOSPC."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    os.system(f"umount {mount}")


def noise(seed: int) -> np.ndarray:
    # Noise does not compress: each JPEG takes tens of KiB, so a 64 KiB disk fills after one or two.
    return np.random.default_rng(seed).integers(0, 255, (120, 160, 3), np.uint8)


def test_a_full_disk_is_one_log_line_leaves_no_temporary_files_and_mqtt_goes_on(tiny_disk, caplog):
    published = []
    writer = SnapshotWriter(SnapshotConfig(directory=str(tiny_disk), max_files=100, quality=95),
                            lambda t, j: published.append(t))
    writer.start()
    with caplog.at_level("INFO", logger="streamclf.snapshots"):
        for i in range(20):
            writer.submit(SnapshotRequest(noise(i), f"t/{i}", f"snap{i:02d}"))
            _wait(lambda i=i: len(published) == i + 1)
        _wait(lambda: writer.written + writer.failed == 20)
        writer.stop()
    assert len(published) == 20  # MQTT does not depend on the disk
    assert writer.failed >= 15 and writer.written >= 1
    names = sorted(p.name for p in tiny_disk.iterdir())
    assert all(n.endswith(".jpg") for n in names), names  # no .jpg.tmp left behind
    complaints = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert len(complaints) == 1, [r.getMessage() for r in complaints]
    assert "No space left on device" in complaints[0].getMessage()
    assert complaints[0].exc_info is None  # a clear line, not a traceback


def test_a_deleted_directory_is_made_again(tmp_path, caplog):
    directory = tmp_path / "snaps"
    writer = SnapshotWriter(SnapshotConfig(directory=str(directory), max_files=2), lambda t, j: None)
    writer.start()
    writer.submit(SnapshotRequest(np.zeros((8, 8, 3), np.uint8), None, "first"))
    _wait(lambda: writer.written == 1)
    for p in directory.iterdir():
        p.unlink()
    directory.rmdir()
    with caplog.at_level("INFO", logger="streamclf.snapshots"):
        for i in range(3):
            writer.submit(SnapshotRequest(np.zeros((8, 8, 3), np.uint8), None, f"again{i}"))
        _wait(lambda: writer.written == 4)
    writer.stop()
    assert writer.failed == 0
    assert sorted(p.name for p in directory.iterdir()) == ["again1.jpg", "again2.jpg"]  # max_files still holds
    assert sum("made again" in r.getMessage() for r in caplog.records) == 1


def test_pending_snapshots_are_bounded_in_bytes(tmp_path):
    release = __import__("threading").Event()
    delivered = []

    def slow_publish(topic, jpeg):
        release.wait(5)
        delivered.append(topic)

    big = np.zeros((1024, 1024, 3), np.uint8)  # 3 MiB each; the bound below holds 2 of them
    writer = SnapshotWriter(SnapshotConfig(max_queued_mib=7), slow_publish)
    writer.start()
    writer.submit(SnapshotRequest(big, "t/0", "s0"))
    _wait(lambda: writer.pending == 0)  # taken by the writer thread, which now waits in publish
    for i in range(1, 6):
        writer.submit(SnapshotRequest(big, f"t/{i}", f"s{i}"))
    assert writer.pending == 2 and writer.dropped_oldest == 3
    release.set()
    _wait(lambda: len(delivered) == 3)
    writer.stop()
    assert delivered == ["t/0", "t/4", "t/5"]  # the newest are kept
