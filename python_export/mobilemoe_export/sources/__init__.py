"""Loaders of published checkpoint formats into :class:`mobilemoe_export.models.Transformer`, and the
recognisers of other libraries' models.

- :mod:`.mobilemoe`: Meta's MobileMoE releases (``model_type: "mobilemoe"``; QAT INT4 and bf16),
  without transformers; :mod:`.mobilemoe_format`: that format's tensor table and a writer of random
  checkpoints in it (tests, ``scripts/make_mobilemoe_checkpoint.py``).
- :mod:`.hf_export`: Hugging Face ``save_pretrained`` checkpoints (``python -m mobilemoe_export --hf
  DIR``) loaded with transformers, their tokenizer files and export metadata;
  :mod:`.hf_families`: what each verified transformers MoE block computes (routing, experts), read
  into the ``MoESpec`` of :mod:`mobilemoe_export.quantization.transforms`.
"""

from .mobilemoe import (  # noqa: F401
    MobileMoECheckpoint,
    MobileMoEFormatError,
    is_mobilemoe_dir,
    load_mobilemoe,
    read_mobilemoe_config,
)
