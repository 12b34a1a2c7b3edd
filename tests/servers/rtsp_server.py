"""Minimal RTSP server for tests (run with the SYSTEM python: /usr/bin/python3).

Why it exists: the streamclf tests need a real RTSP camera they can start, SIGKILL
and restart on the same port to exercise reconnect logic. GstRtspServer is only
available through the distro's PyGObject (`gi`), which is not in the venv, so this
script is launched as a subprocess by tests/servers.RtspServer.

  /usr/bin/python3 rtsp_server.py --port 8554 --path /cam --pattern
  /usr/bin/python3 rtsp_server.py --port 8554 --path /cam --file video.mp4

Prints "READY" once listening. Every client gets its own pipeline (file streams start
from the beginning for each connection; no looping: the stream ends at EOF).
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENC = ("videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast"
       " key-int-max={gop} bframes=0 ! rtph264pay name=pay0 pt=96 config-interval=1")

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--path", default="/stream")
src = p.add_mutually_exclusive_group(required=True)
src.add_argument("--file")
src.add_argument("--pattern", action="store_true")
p.add_argument("--fps", type=int, default=15)
a = p.parse_args()

Gst.init(None)
if a.pattern:
    launch = (f"videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,"
              f"framerate={a.fps}/1 ! " + ENC.format(gop=a.fps))
else:
    launch = f'filesrc location="{a.file}" ! decodebin ! ' + ENC.format(gop=10)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( {launch} )")
factory.set_shared(False)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(str(a.port))
server.get_mount_points().add_factory(a.path if a.path.startswith("/") else "/" + a.path, factory)
if not server.attach(None):
    sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{a.port}")
print("READY", flush=True)
GLib.MainLoop().run()
