"""``python -m tests.stalling_daemon run -c config.yaml``: the real daemon over a model whose calls
hang after ``STREAMCLF_TEST_STALL_AFTER_BATCHES`` batches, as a hung GPU call would, so a test
can watch the watchdog pings stop. The fault lives here, never in streamclf itself."""

from __future__ import annotations

import logging
import os
import sys
import threading

from streamclf import cli

log = logging.getLogger("tests.stalling_daemon")


class StallingClassifier:
    """Delegates to the real classifier; ``embed_images`` blocks for good after ``after`` calls."""

    def __init__(self, inner, after: int):
        self._inner = inner
        self._after = after
        self._calls = 0
        self._never = threading.Event()

    def embed_images(self, *args, **kwargs):
        if self._calls >= self._after:
            log.warning("test fault: the model call stalls now, after %d batches (STREAMCLF_TEST_STALL_AFTER_BATCHES)",
                        self._calls)
            self._never.wait()
        self._calls += 1
        return self._inner.embed_images(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def main() -> int:
    after = int(os.environ["STREAMCLF_TEST_STALL_AFTER_BATCHES"])
    return cli.main(make_classifier=lambda model_cfg: StallingClassifier(cli.load_classifier(model_cfg), after))


if __name__ == "__main__":
    sys.exit(main())
