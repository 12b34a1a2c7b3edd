"""Ground truth for ``streamclf evaluate``: when each label is present in each video, read and checked.

Every check runs before the model loads, and every problem is reported at once, each with the
TRUTH file's line: a label or camera the config lacks, a missing or unreadable video, intervals
that are reversed, overlap or lie past the video's end, an image folder of an unknown label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import yaml

from streamclf.config import Config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_END_SLACK_S = 1e-3  # an interval may end at the video's last instant, rounded


class TruthError(Exception):
    """The TRUTH file is wrong; ``problems`` are ``file:line: message`` strings, in file order."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Interval:
    """A label present from ``start_s`` to ``end_s`` (seconds of the video's media time, both included)."""

    start_s: float
    end_s: float

    def contains(self, t: float) -> bool:
        return self.start_s <= t <= self.end_s

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return start_s <= self.end_s and end_s >= self.start_s


@dataclass(frozen=True)
class VideoTruth:
    """One video: the camera whose rules apply, its length (seconds) and each label's intervals.

    A label of the camera missing from ``intervals`` is absent for the whole video.
    """

    path: str
    camera: str
    duration_s: float
    intervals: dict[str, tuple[Interval, ...]]

    def present(self, label: str, t: float) -> bool:
        return any(i.contains(t) for i in self.intervals.get(label, ()))


@dataclass(frozen=True)
class LabelledImage:
    """A still whose folder names its label (a background label: a negative for every label)."""

    path: str
    label: str


@dataclass(frozen=True)
class Truth:
    source: str  # the TRUTH file
    videos: tuple[VideoTruth, ...]
    images: tuple[LabelledImage, ...] = ()
    images_camera: str | None = None


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.found: list[tuple[int, str]] = []

    def add(self, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.found.append((line, message))

    def raise_any(self) -> None:
        if self.found:
            raise TruthError([f"{self.source}:{line}: {msg}" if line else f"{self.source}: {msg}"
                              for line, msg in sorted(self.found, key=lambda p: p[0])])


def load_truth(path: str | Path, cfg: Config, config_dir: str | Path) -> Truth:
    """Read and check the TRUTH file at ``path`` against ``cfg`` (whose relative sources resolve
    against ``config_dir``); raises TruthError listing every problem."""
    source = str(path)
    problems = _Problems(source)
    try:
        root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise TruthError([f"{source}: cannot read: {exc}"]) from None
    base = os.path.dirname(os.path.abspath(source))
    if not isinstance(root, yaml.MappingNode):
        problems.add(root, "expected a mapping with 'videos:' (and optionally 'images:')")
        problems.raise_any()
    assert isinstance(root, yaml.MappingNode)
    videos: list[VideoTruth] = []
    images: list[LabelledImage] = []
    images_camera = None
    sections = {key.value: (key, value) for key, value in root.value}
    for name, (key, _) in sections.items():
        if name not in ("videos", "images"):
            problems.add(key, f"unknown key {name!r}: expected 'videos' and optionally 'images'")
    if "videos" not in sections and "images" not in sections:
        problems.add(root, "nothing to evaluate: no 'videos:' and no 'images:'")
    if "videos" in sections:
        videos = _videos(sections["videos"][1], cfg, base, os.path.abspath(config_dir), problems)
    if "images" in sections:
        images_camera, images = _images(sections["images"][1], cfg, base, problems)
    problems.raise_any()
    return Truth(source, tuple(videos), tuple(images), images_camera)


def _videos(node: yaml.Node, cfg: Config, base: str, config_dir: str, problems: _Problems) -> list[VideoTruth]:
    if not isinstance(node, yaml.MappingNode):
        problems.add(node, "'videos' must map each video file to its camera and labels")
        return []
    out = []
    for key, body in node.value:
        video = _video(key, body, cfg, base, config_dir, problems)
        if video is not None:
            out.append(video)
    return out


def _video(key: yaml.Node, body: yaml.Node, cfg: Config, base: str, config_dir: str,
           problems: _Problems) -> VideoTruth | None:
    path = os.path.join(base, str(key.value))
    duration = video_duration_s(path)
    if isinstance(duration, str):
        problems.add(key, f"video {key.value}: {duration}")
        return None
    entries = body.value if isinstance(body, yaml.MappingNode) else []
    if not isinstance(body, yaml.MappingNode) and not (isinstance(body, yaml.ScalarNode) and body.value in ("", "~")):
        problems.add(body, f"video {key.value}: expected 'camera:' and label: [[start_s, end_s], ...] entries")
        return None
    camera_node = next((v for k, v in entries if k.value == "camera"), None)
    camera = _camera_for(camera_node, key, path, cfg, config_dir, problems)
    if camera is None:
        return None
    labels = cfg.labels_for(camera)
    intervals: dict[str, tuple[Interval, ...]] = {}
    for k, v in entries:
        if k.value == "camera":
            continue
        if k.value not in cfg.labels:
            problems.add(k, f"label {k.value!r} is not in the config (labels: {', '.join(cfg.labels)})")
        elif k.value not in labels:
            problems.add(k, f"label {k.value!r} is not a label of camera {camera!r} (its labels: {', '.join(labels)})")
        elif cfg.labels[k.value].background:
            problems.add(k, f"label {k.value!r} is a background label: it never alerts, so there is nothing to score")
        else:
            intervals[k.value] = _intervals(v, k.value, duration, problems)
    return VideoTruth(path, camera, duration, intervals)


def _camera_for(node: yaml.Node | None, key: yaml.Node, path: str, cfg: Config, config_dir: str,
                problems: _Problems) -> str | None:
    if node is not None:
        if node.value not in cfg.cameras:
            problems.add(node, f"camera {node.value!r} is not in the config (cameras: {', '.join(cfg.cameras)})")
            return None
        return str(node.value)
    target = os.path.realpath(path)
    matches = [name for name, cam in cfg.cameras.items() if cam.is_file
               and os.path.realpath(os.path.join(config_dir, os.path.expanduser(str(cam.source)))) == target]
    if len(matches) != 1:
        why = "no camera has" if not matches else f"cameras {', '.join(matches)} have"
        problems.add(key, f"video {key.value}: {why} this file as its source; say which with 'camera:'")
        return None
    return matches[0]


def _intervals(node: yaml.Node, label: str, duration_s: float, problems: _Problems) -> tuple[Interval, ...]:
    if not isinstance(node, yaml.SequenceNode):
        problems.add(node, f"label {label!r}: expected a list of [start_s, end_s] intervals")
        return ()
    found: list[tuple[Interval, yaml.Node]] = []
    for item in node.value:
        pair = _pair(item)
        if pair is None:
            problems.add(item, f"label {label!r}: an interval is [start_s, end_s], two numbers of seconds")
            continue
        start, end = pair
        if start < 0 or end <= start:
            problems.add(item, f"label {label!r}: interval [{start:g}, {end:g}] is reversed or empty "
                               "(it must start at 0 s or later and end after it starts)")
        elif end > duration_s + _END_SLACK_S:
            problems.add(item, f"label {label!r}: interval [{start:g}, {end:g}] lies past the video's end "
                               f"({duration_s:.3f} s)")
        else:
            found.append((Interval(start, end), item))
    found.sort(key=lambda f: f[0].start_s)
    for (a, _), (b, item) in zip(found, found[1:], strict=False):
        if b.start_s < a.end_s:
            problems.add(item, f"label {label!r}: interval [{b.start_s:g}, {b.end_s:g}] overlaps "
                               f"[{a.start_s:g}, {a.end_s:g}]; merge them")
    return tuple(i for i, _ in found)


def _pair(node: yaml.Node) -> tuple[float, float] | None:
    if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2:
        return None
    try:
        start, end = (float(v.value) for v in node.value if isinstance(v, yaml.ScalarNode))
    except ValueError:
        return None
    return start, end


def _images(node: yaml.Node, cfg: Config, base: str, problems: _Problems) -> tuple[str | None, list[LabelledImage]]:
    entries = {k.value: (k, v) for k, v in node.value} if isinstance(node, yaml.MappingNode) else {}
    if "dir" not in entries:
        problems.add(node, "'images' needs 'dir:' (one folder per label) and, with several cameras, 'camera:'")
        return None, []
    for name, (k, _) in entries.items():
        if name not in ("dir", "camera"):
            problems.add(k, f"unknown key {name!r} under 'images': expected 'dir' and 'camera'")
    if "camera" in entries:
        camera = str(entries["camera"][1].value)
        if camera not in cfg.cameras:
            problems.add(entries["camera"][1],
                         f"camera {camera!r} is not in the config (cameras: {', '.join(cfg.cameras)})")
            return None, []
    elif len(cfg.cameras) == 1:
        camera = next(iter(cfg.cameras))
    else:
        problems.add(node, "'images' needs 'camera:' when the config has several cameras")
        return None, []
    dir_node = entries["dir"][1]
    root = os.path.join(base, str(dir_node.value))
    if not os.path.isdir(root):
        problems.add(dir_node, f"image folder {dir_node.value} does not exist")
        return camera, []
    return camera, _image_files(root, dir_node, cfg.labels_for(camera), camera, problems)


def _image_files(root: str, node: yaml.Node, labels: list[str], camera: str,
                 problems: _Problems) -> list[LabelledImage]:
    out = []
    for label in sorted(os.listdir(root)):
        folder = os.path.join(root, label)
        if not os.path.isdir(folder):
            continue
        if label not in labels:
            problems.add(node, f"image folder {label!r} is not a label of camera {camera!r} "
                               f"(its labels: {', '.join(labels)})")
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.lower().endswith(IMAGE_SUFFIXES):
                if cv2.imread(path) is None:
                    problems.add(node, f"image {path} cannot be read")
                else:
                    out.append(LabelledImage(path, label))
    if not out:
        problems.add(node, f"no images ({', '.join(IMAGE_SUFFIXES)}) in label folders under {root}")
    return out


def video_duration_s(path: str) -> float | str:
    """The video's length in seconds, or why it cannot be read."""
    if not os.path.isfile(path):
        return f"{path} does not exist"
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return f"{path} is not a video OpenCV/FFmpeg can read"
        ok, _ = cap.read()
        if not ok:
            return f"{path} has no decodable frames"
        fps = cap.get(cv2.CAP_PROP_FPS)
        frames = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if not fps or fps != fps or not frames or frames != frames:
            return f"{path} does not say its frame rate and length"
        return float(frames) / float(fps)
    finally:
        cap.release()
