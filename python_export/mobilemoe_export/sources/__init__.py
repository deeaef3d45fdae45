"""Loaders of published checkpoint formats into :class:`mobilemoe_export.models.Transformer`.

- :mod:`.mobilemoe`: Meta's MobileMoE releases (``model_type: "mobilemoe"``; QAT INT4 and bf16),
  without transformers; :mod:`.mobilemoe_format`: that format's tensor table and a writer of random
  checkpoints in it (tests, ``scripts/make_mobilemoe_checkpoint.py``).
"""

from .mobilemoe import (  # noqa: F401
    MobileMoECheckpoint,
    MobileMoEFormatError,
    is_mobilemoe_dir,
    load_mobilemoe,
    read_mobilemoe_config,
)
