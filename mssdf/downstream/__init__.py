"""Downstream tasks on the pre-trained encoder: one fine-tuning engine for every task.

``backbone`` (the encoder from any initialisation + a simple feature pyramid), ``heads``
(UPerNet + auxiliary FCN, height decoder), ``config`` (one run: profiles ``smoke`` /
``paper``, the paper datasets' presets), ``data`` (standardised, augmented, checked
samples), ``engine`` (fine-tuning on :mod:`mssdf.engine`: layer-decay AdamW, selection on
validation, test, exact resume, DDP), ``metrics`` (torchmetrics over whole splits),
``inference`` (sliding windows), ``study`` (initialisation × seed × dataset), ``cli``
(``python -m mssdf.downstream``).
"""
