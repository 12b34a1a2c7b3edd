"""``<prefix>_info`` on a stock Triton: answers every request with the ``ServerInfo`` JSON ``streamclf export``
wrote next to this file (``info.json``). Needs numpy only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INFO_FILE = "info.json"


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize`` once, ``execute`` per batch of requests."""

    def initialize(self, args: dict) -> None:
        here = Path(args["model_repository"]) / args["model_version"]
        self.info = (here / INFO_FILE).read_bytes()
        json.loads(self.info)  # a broken file fails the model's load, not the first request

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "protocol").as_numpy().shape[0]
            info = np.array([[self.info]] * rows, dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("info", info)]))
        return responses
