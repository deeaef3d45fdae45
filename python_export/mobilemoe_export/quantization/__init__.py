"""From float weights to the kernels' INT4 format.

- :mod:`.quant`: the INT4 / INT8 format (quantize, pack, unpack, dequantize with the kernels' numerics);
- :mod:`.transforms`: ``quantize_moe``, the recognisers of MoE blocks (``MoESpec``) and the quantized
  modules ``MobileMoEFFN`` / ``MobileMoELinear``;
- :mod:`.qat`: ``prepare_qat`` / ``remove_qat`` (fake quantization with the kernels' numerics);
- :mod:`.torchao_layout`: torchao's packed layout, read into ``MoESpec``.
"""
