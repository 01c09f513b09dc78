"""Downstream tasks: backbones from any initialisation, heads, fine-tuning and metrics.

Reserved for the downstream issues (segmentation, height, classification, change,
detection); they build on :mod:`mssdf.engine` as pre-training does.
"""
