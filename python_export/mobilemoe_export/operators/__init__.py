"""The ``mobilemoe::*`` operators on the PyTorch side.

- :mod:`.ops`: ``torch.library`` definitions of ``moe_ffn`` / ``int4_linear`` (from the packaged
  ``schema/ops.txt``) with fake kernels and CPU kernels that call the Rust library;
- :mod:`.decoder_ops`: the whole-decoder ops (embedding, rms_norm, attention, swiglu_ffn, lm_head);
- :mod:`.reference`: the pure-PyTorch reference numerics of the ops;
- :mod:`._lib`: the ctypes binding of ``libmobilemoe_executorch.so`` (its C ABI, ``load_runtime``).

Nothing is imported here: ``mobilemoe_export`` imports :mod:`.ops` (which defines the ops).
"""
