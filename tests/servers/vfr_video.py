"""Write a variable-frame-rate Matroska/MJPEG file with GStreamer: ``vfr_video.py OUT T0 T1 ...`` (seconds).

Run by the system python (gi + GStreamer), like rtsp_server.py. Frame i is a flat grey of level
``(i * 10) % 256``, shown from time Ti until the next one (the last for 0.1 s).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

W, H = 160, 120


def main(out: str, times: list[float]) -> None:
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"appsrc name=src format=time caps=video/x-raw,format=GRAY8,width={W},height={H},framerate=0/1 "
        f"! videoconvert ! jpegenc ! matroskamux ! filesink location={out}"
    )
    src = pipeline.get_by_name("src")
    pipeline.set_state(Gst.State.PLAYING)
    for i, t in enumerate(times):
        end = times[i + 1] if i + 1 < len(times) else t + 0.1
        buf = Gst.Buffer.new_wrapped(bytes([(i * 10) % 256]) * (W * H))
        buf.pts = int(t * Gst.SECOND)
        buf.duration = int((end - t) * Gst.SECOND)
        src.emit("push-buffer", buf)
    src.emit("end-of-stream")
    msg = pipeline.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if msg is None or msg.type != Gst.MessageType.EOS:
        sys.exit(f"GStreamer failed: {msg.parse_error() if msg else 'timeout'}")


if __name__ == "__main__":
    main(sys.argv[1], [float(t) for t in sys.argv[2:]])
