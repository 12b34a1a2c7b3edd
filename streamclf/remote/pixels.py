"""Interim: a node's preprocessing (the export branch brings the numpy path for nodes without torch)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from streamclf.image_spec import PreprocessSpec


def prepare_frame(spec: PreprocessSpec, bgr: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    from streamclf.model.preprocess import resize_and_crop

    def prepare(image: np.ndarray) -> np.ndarray:
        x = resize_and_crop(image, spec).numpy()
        return np.ascontiguousarray(x[::-1]) if bgr else x

    return prepare
