"""From a quantized PyTorch model to a ``.pte`` file.

- :mod:`.decoder`: ``lower_decoder`` (the whole decoder onto the ``mobilemoe::*`` decoder ops);
- :mod:`.backend`: ``MobileMoEPartitioner``, ``MobileMoEBackend`` (ExecuTorch ``BackendDetails``) and
  the blob writer / reader; ``_fbs/`` is the flatbuffers code ``flatc`` generates from the packaged
  ``schema/mobilemoe.fbs`` (regenerate: ``python -m mobilemoe_export.backend --regen``);
- :mod:`.export`: ``export_pte`` (torch.export -> edge -> partition -> ``.pte``).

Nothing is imported here: these modules pull in ``executorch.exir``.
"""
