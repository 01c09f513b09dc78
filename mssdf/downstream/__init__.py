"""Downstream tasks on the pre-trained encoder: one engine for every task — semantic
segmentation, height estimation, change detection and scene classification.

``backbone`` (the encoder from any initialisation + a simple feature pyramid, or its pooled
embedding), ``heads`` (UPerNet + auxiliary FCN, the siamese change model, the
classification head, the height decoder), ``config`` (one run: profiles ``smoke`` /
``paper``, the paper datasets' presets), ``data`` (standardised, augmented, checked
samples; both dates of a change pair), ``engine`` (fine-tuning on :mod:`mssdf.engine`:
layer-decay AdamW, selection on validation, test, exact resume, DDP), ``classification``
(kNN and the linear probe on frozen features; mixup/cutmix), ``change`` (the thresholded
pixel-difference baseline), ``metrics`` (torchmetrics over whole splits), ``inference``
(sliding windows), ``study`` (initialisation × seed × dataset), ``cli``
(``python -m mssdf.downstream``).
"""
