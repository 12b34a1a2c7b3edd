"""Config loading: every error names its key path and YAML line; ${VAR} substitution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamclf.cli import main
from streamclf.config import ConfigError, parse_config
from tests.conftest import REPO, daemon_env, dedent

VALID = dedent(
    """
    mqtt:
      host: 127.0.0.1
      password: ${MQTT_PASSWORD}
    labels:
      person:
        prompts: ["a photo of a person"]
        threshold: 0.5
      nothing:
        prompts: ["a photo of an empty room"]
        background: true
    cameras:
      front_door:
        source: rtsp://user:${CAM_PASS}@camera.local/stream
        fps: 2
        labels: [person, nothing]
      webcam:
        source: 0
    """
)
ENV = {"MQTT_PASSWORD": "s3cret", "CAM_PASS": "hunter2"}


def test_valid_config_substitutes_environment():
    cfg = parse_config(VALID, env=ENV)
    assert cfg.mqtt.password == "s3cret"
    assert cfg.cameras["front_door"].source == "rtsp://user:hunter2@camera.local/stream"
    assert cfg.cameras["webcam"].source == 0
    assert cfg.labels_for("webcam") == ["person", "nothing"]
    assert cfg.labels["person"].prompts_for("person") == ["a photo of a person"]
    assert cfg.model.name == "openai/clip-vit-base-patch32" and cfg.model.batch_size == 8


def test_default_prompt_comes_from_the_label_name():
    cfg = parse_config(VALID.replace('    prompts: ["a photo of a person"]\n', ""), env=ENV)
    assert cfg.labels["person"].prompts_for("delivery_van") == ["a photo of a delivery van"]


@pytest.mark.parametrize(
    "old, new, env, expected_path, expected_line, expected_text",
    [
        ("  host: 127.0.0.1\n", "  host: 127.0.0.1\n  hots: x\n", ENV, "mqtt.hots", 3, "unknown key"),
        ("    fps: 2\n", "    fps: fast\n", ENV, "cameras.front_door.fps", 14, "valid number"),
        ("    labels: [person, nothing]\n", "    labels: [person, cat]\n", ENV, "cameras.front_door.labels", 15, "'cat'"),
        ("${CAM_PASS}", "${CAM_PASS}", {"MQTT_PASSWORD": "x"}, "cameras.front_door.source", 13, "${CAM_PASS} is not set"),
        ("    threshold: 0.5\n", "    threshold: 1.5\n", ENV, "labels.person.threshold", 7, "less than or equal to 1"),
        ("    source: 0\n", "    sorce: 0\n", ENV, "cameras.webcam", 16, "Field required"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-label", "unset-var", "out-of-range", "missing-required"],
)
def test_config_errors_name_key_and_line(old, new, env, expected_path, expected_line, expected_text):
    assert old in VALID
    with pytest.raises(ConfigError) as info:
        parse_config(VALID.replace(old, new), env=env)
    matching = [p for p in info.value.problems if p.path.startswith(expected_path)]
    assert matching, f"no problem at {expected_path}: {info.value.problems}"
    assert matching[0].line == expected_line
    assert expected_text in matching[0].message


def test_invalid_yaml_reports_line():
    with pytest.raises(ConfigError) as info:
        parse_config("mqtt:\n  host: [unclosed\nlabels: {}\n")
    assert info.value.problems[0].line is not None and "YAML" in info.value.problems[0].message


def test_check_config_cli_exit_codes(tmp_path, capsys, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    assert main(["check-config", "-c", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("    fps: 2\n", "    fps: 2\n    colour: red\n"))
    assert main(["check-config", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "line 15: cameras.front_door.colour: unknown key" in err
    assert main(["check-config", "-c", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_check_config_as_a_process_and_shipped_config_is_valid():
    """The shipped config.yaml validates, through ``python -m streamclf`` like a user runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "streamclf", "check-config", "-c", str(REPO / "config.yaml")],
        capture_output=True, text=True, env=daemon_env(), timeout=60,
    )
    assert out.returncode == 0, out.stderr
    version = subprocess.run([sys.executable, "-m", "streamclf", "--version"], capture_output=True, text=True,
                             env=daemon_env(), timeout=60)
    assert version.stdout.startswith("streamclf ")
