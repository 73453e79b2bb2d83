"""Training, evaluation, inference and decoding for (prompt-)tuning frozen T5 models.

Modules: trainer (the loop), models (loss), data (SeqIO), optimizers, trainable
(frozen vs trainable split), checkpointing, evaluation, decoding, inference, and
the entry points evaluate, infer and cli.
"""
