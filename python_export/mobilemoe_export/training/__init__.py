"""The training recipe of the shipped default model (``python -m mobilemoe_export.train``; docs/training.md).

- :mod:`.train`: the staged recipe (pretraining, ..., QAT) and its command line;
- :mod:`.train_data`: corpora, tokenization and batches.
"""
