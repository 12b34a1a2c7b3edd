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
      username: streamclf  # a password needs a user name
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
        ("    fps: 2\n", "    fps: fast\n", ENV, "cameras.front_door.fps", 15, "valid number"),
        ("    labels: [person, nothing]\n", "    labels: [person, cat]\n", ENV, "cameras.front_door.labels", 16,
         "'cat'"),
        ("${CAM_PASS}", "${CAM_PASS}", {"MQTT_PASSWORD": "x"}, "cameras.front_door.source", 14,
         "${CAM_PASS} is not set"),
        ("    threshold: 0.5\n", "    threshold: 1.5\n", ENV, "labels.person.threshold", 8, "less than or equal to 1"),
        ("    source: 0\n", "    sorce: 0\n", ENV, "cameras.webcam", 17, "Field required"),
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
    assert "line 16: cameras.front_door.colour: unknown key" in err
    assert main(["check-config", "-c", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_check_config_knows_a_serve_config_and_names_its_keys_and_lines(tmp_path, capsys):
    serve = tmp_path / "serve.yaml"
    serve.write_text("model:\n  name: /models/clip\nserve:\n  grpc_port: 9001\n  preferred_batch_sizes: [8, 16]\n")
    assert main(["check-config", "-c", str(serve)]) == 0
    assert "streamclf serve: /models/clip, gRPC port 9001" in capsys.readouterr().out
    serve.write_text("model:\n  name: /models/clip\nserve:\n  grpc_port: 70000\n  tls_cert: rel.pem\n"
                     f"  tls_key: {tmp_path}/missing.key\n  cameras_here: 1\n")
    assert main(["check-config", "-c", str(serve)]) == 1
    err = capsys.readouterr().err
    assert "line 4: serve.grpc_port: Input should be less than or equal to 65535" in err
    assert "line 5: serve.tls_cert: must be an absolute path" in err
    assert "line 7: serve.cameras_here: unknown key" in err


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


# --------------------------------------------------------------------------- secrets never printed

SECRET = "987654321"


@pytest.mark.parametrize(
    "yaml_text, env, expected_path",
    [
        (f"mqtt: {{password: {SECRET}}}\n", {}, "mqtt.password"),
        (f"mqtt: {{password: [{SECRET}]}}\n", {}, "mqtt.password"),
        (f"mqtt: {{password: '{SECRET}' , password_credential: pw}}\n", {}, "mqtt"),
        (f"mqtt: {{password: '{'x' * 70000}{SECRET}'}}\n", {}, "mqtt.password"),
        (f"mqtt: {{pasword: {SECRET}}}\n", {}, "mqtt.pasword"),
        # A YAML syntax error on the password's line: the parser's excerpt of the line is not shown.
        (f'mqtt:\n  password: "{SECRET}\n', {}, ""),
        (f"mqtt:\n  password: {SECRET}: x\n", {}, ""),
        # Values from the environment are where secrets live: never echoed, whatever the field.
        ("mqtt: {port: '${MQTT_PORT}'}\n", {"MQTT_PORT": SECRET + "x"}, "mqtt.port"),
        # Stream URLs are shown redacted.
        (f"cameras: {{c: {{source: 'ftp://admin:{SECRET}@nas/v.mp4'}}}}\n", {}, "cameras.c.source"),
        (f"cameras: {{c: {{source: 'rtsp://cam:99999/s?pwd={SECRET}'}}}}\n", {}, "cameras.c.source"),
        (f"cameras: {{c: {{source: 'ftp://{'u' * 45}:{SECRET}@{'n' * 80}/v.mp4'}}}}\n", {}, "cameras.c.source"),
    ],
    ids=["numeric", "list", "both-password-and-credential", "too-long", "typo-key", "yaml-unclosed-quote",
         "yaml-colon", "from-environment", "source-userinfo", "source-query", "source-long"],
)
def test_config_errors_never_show_a_secret(yaml_text, env, expected_path):
    text = yaml_text + "labels: {a: {}, b: {}}\ncameras: {c: {source: c.mp4}}\n" if "cameras" not in yaml_text \
        else yaml_text + "labels: {a: {}, b: {}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env)
    assert SECRET[:4] not in str(info.value)  # not even the part before a cut
    assert any(p.path.startswith(expected_path) for p in info.value.problems), info.value.problems


def test_a_numeric_password_is_rejected_with_advice():
    with pytest.raises(ConfigError) as info:
        parse_config(f"mqtt: {{password: {SECRET}}}\nlabels: {{a: {{}}, b: {{}}}}\ncameras: {{c: {{source: 0}}}}\n")
    [problem] = info.value.problems
    assert problem.path == "mqtt.password" and problem.line == 1
    assert "quote" in problem.message and SECRET not in problem.message


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_never_print_a_secret(tmp_path, command):
    """Through ``python -m streamclf`` like a user runs it: stdout and stderr hold no secret."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"mqtt:\n  password: {SECRET}\n"
        "labels: {a: {}, b: {}}\n"
        f"cameras:\n  c: {{source: 'ftp://admin:{SECRET}@nas/v.mp4'}}\n"
    )
    out = subprocess.run([sys.executable, "-m", "streamclf", command, "-c", str(path)],
                         capture_output=True, text=True, env=daemon_env(), timeout=120)
    assert out.returncode == 1
    assert "mqtt.password" in out.stderr and "cameras.c.source" in out.stderr
    assert SECRET not in out.stdout + out.stderr


# --------------------------------------------------------------------------- every problem, no traceback

def test_a_label_with_an_empty_body_takes_the_defaults(tmp_path):
    text = "labels:\n  person:\n  car:\n  empty: {background: true}\ncameras:\n  c: {source: c.mp4}\n"
    cfg = parse_config(text)
    assert cfg.labels["person"].prompts_for("person") == ["a photo of a person"]
    assert cfg.labels["car"].threshold == 0.5 and cfg.labels["empty"].background
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert main(["check-config", "-c", str(path)]) == 0


@pytest.mark.parametrize(
    "text, expected_path, expected_line",
    [
        ("labels: {a: {}, b: {}}\ncameras:\n  c:\n    source: c.mp4\n    zones:\n      porch:\n",
         "cameras.c.zones.porch", 6),
        ("labels: {a: {}, b: {}}\ncameras:\n  c:\n", "cameras.c", 3),
        ("labels: {a: {}, b: {}}\ncameras:\n", "cameras", 2),
        ("labels: {a: {}, b: {}}\ncameras: {c: {source: c.mp4, fps: }}\n", "cameras.c.fps", 2),
    ],
    ids=["zone", "camera", "cameras", "number"],
)
def test_empty_values_are_errors_with_key_and_line(text, expected_path, expected_line):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    matching = [p for p in info.value.problems if p.path.startswith(expected_path)]
    assert matching and matching[0].line == expected_line, info.value.problems


def test_every_problem_is_reported_together():
    """A cross-section problem (an unknown label) is reported next to a field error elsewhere."""
    text = VALID.replace("    fps: 2\n", "    fps: fast\n").replace("[person, nothing]", "[person, cat]") \
        .replace("  host: 127.0.0.1\n", "  host: 127.0.0.1\n  hots: x\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=ENV)
    paths = {p.path: p for p in info.value.problems}
    assert set(paths) == {"mqtt.hots", "cameras.front_door.fps", "cameras.front_door.labels"}, info.value.problems
    assert "unknown label(s) ['cat']" in paths["cameras.front_door.labels"].message
    assert paths["cameras.front_door.labels"].line == 17


def test_unset_variables_are_reported_with_the_other_problems():
    text = VALID.replace("    fps: 2\n", "    fps: fast\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={"MQTT_PASSWORD": "x"})
    assert {p.path for p in info.value.problems} == {"cameras.front_door.source", "cameras.front_door.fps"}


def test_a_duplicate_key_is_an_error():
    with pytest.raises(ConfigError) as info:
        parse_config("labels:\n  a: {}\n  b: {}\n  a: {threshold: 0.2}\ncameras: {c: {source: c.mp4}}\n")
    [problem] = info.value.problems
    assert (problem.path, problem.line) == ("labels.a", 4) and "more than once" in problem.message


def test_the_password_is_not_in_the_config_repr():
    """A config object that reaches a log line or an exception text does not carry the password with it."""
    cfg = parse_config(
        f"mqtt: {{username: u, password: '{SECRET}'}}\nlabels: {{a: {{}}, b: {{}}}}\ncameras: {{c: {{source: 0}}}}\n"
    )
    assert cfg.mqtt.password == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.mqtt)


def test_a_triton_request_may_not_outlast_the_stall_timeout():
    """A hung server makes each batch wait timeout_s: past stall_timeout_s the watchdog would restart the node
    in a loop, though a restart cannot bring the server back (service/runtime.py's health)."""
    triton = "model: {backend: triton, triton: {url: 'gpu:8001', timeout_s: 60}}\n"
    base = "labels: {person: {}, empty: {background: true}}\ncameras: {front: {source: front.mp4}}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(base + triton)
    assert [p.path for p in err.value.problems] == ["model.triton.timeout_s"]
    assert "service.stall_timeout_s" in err.value.problems[0].message
    parse_config(base + triton + "service: {stall_timeout_s: 120}\n")
    parse_config(base + triton.replace("triton, ", "local, "))  # a local model does not wait on a server
