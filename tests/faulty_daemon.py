"""``python -m tests.faulty_daemon run -c config.yaml``: the real daemon with a fault that ends one of
its worker threads, chosen by ``STREAMCLF_TEST_FAULT``:

- ``control``: the first ``enabled/set`` command raises an exception no handler catches (a
  ``BaseException``), as a bug deep in a stage would, and the control thread ends;
- ``inference``: the model call raises after ``STREAMCLF_TEST_FAULT_AFTER_BATCHES`` batches.

The fault lives here, never in streamclf itself."""

from __future__ import annotations

import os
import sys

from streamclf import cli
from streamclf.pipeline import Pipeline


class InjectedFault(BaseException):
    """Not an Exception: no per-item handler catches it, so it ends the thread it is raised in."""


class FailingClassifier:
    """Delegates to the real classifier; ``embed_images`` raises after ``after`` calls."""

    def __init__(self, inner, after: int):
        self._inner, self._after, self._calls = inner, after, 0

    def embed_images(self, *args, **kwargs):
        if self._calls >= self._after:
            raise RuntimeError("test fault: the model call fails")
        self._calls += 1
        return self._inner.embed_images(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def main() -> int:
    fault = os.environ["STREAMCLF_TEST_FAULT"]
    if fault == "control":
        def set_camera_enabled(self, camera, enabled):
            raise InjectedFault("test fault: the control thread ends")

        Pipeline.set_camera_enabled = set_camera_enabled  # type: ignore[method-assign]
        return cli.main()
    after = int(os.environ.get("STREAMCLF_TEST_FAULT_AFTER_BATCHES", "3"))
    return cli.main(make_classifier=lambda model_cfg: FailingClassifier(cli.load_classifier(model_cfg), after))


if __name__ == "__main__":
    sys.exit(main())
