"""The control command queue: bounded, a command that does not fit is refused with an error reply."""

from __future__ import annotations

import threading

from streamclf.config import parse_config
from streamclf.control import Controller
from tests.conftest import wait_until
from tests.test_control import CONFIG, FakePipeline, FakePublisher


class BlockingPipeline(FakePipeline):
    """Holds the first set_camera_enabled until released, so the commands behind it queue up."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.entered = threading.Event()
        self.release = threading.Event()

    def set_camera_enabled(self, camera, enabled):
        self.entered.set()
        assert self.release.wait(10)
        super().set_camera_enabled(camera, enabled)


def test_a_full_command_queue_refuses_the_newest_command_and_says_so():
    pub, target = FakePublisher(), BlockingPipeline(parse_config(CONFIG))
    controller = Controller(target, pub)
    controller.start()
    send = pub.subscriptions[pub.topic("+", "enabled", "set")]
    topic = pub.topic("front", "enabled", "set")
    send(topic, b"OFF")  # taken by the command thread, which then blocks
    assert target.entered.wait(5)
    for _ in range(controller.max_queued_commands + 1):
        send(topic, b"ON")
    errors = pub.errors()
    assert len(errors) == 1 and errors[0]["error"] == "too many control commands waiting (more than 64)"
    target.release.set()
    wait_until(lambda: controller.applied == 1 + controller.max_queued_commands, 10, "queued commands applied")
    controller.stop()
    assert controller.rejected == 1
