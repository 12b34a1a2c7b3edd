"""The model on a Triton server: what a node sends and gets back, the node's client, the server.

- ``protocol``: the three models a server hosts (image, text, info), their tensors, and the
  server's description of its model (``ServerInfo``). No torch, no Triton client.
- ``pixels``: a node's preprocessing without torch: resize and crop to the uint8 pixels the server reads.
- ``client``: ``TritonClassifier``, the node's model: a Triton client over gRPC, with timeouts,
  reconnects and its own drop reason when the server is away. Needs ``tritonclient[grpc]`` only.
- ``server``: ``streamclf serve``: the local model code hosted on Triton through PyTriton.
- ``export``: a model repository a stock Triton (or KServe) serves.
"""
