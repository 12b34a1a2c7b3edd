"""Triton Python-backend models that ``streamclf export`` copies into a model repository as ``model.py``.

They run inside a stock Triton container's Python backend, not in streamclf: each imports only
the standard library, numpy and (the text model) ``tokenizers``, and reads what the export wrote
next to it in the model's version directory.

- ``text_model``: ``<prefix>_text``: prompts tokenized as the local model tokenizes them, then the
  ONNX text encoder ``<prefix>_text_encoder`` called through Triton (BLS).
- ``info_model``: ``<prefix>_info``: the checkpoint's ``ServerInfo``, as JSON.
"""
