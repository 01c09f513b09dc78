"""What the notebooks show: figures, tables and report-only computations.

    plots      display helpers shared by every report (one percentile stretch, overlays, PCA)
    method     masking statistics of the method notebook (00)
    preview    previews of the prepared sample (01)
    pretrain   the pre-training notebook's run, probes and tables (02)
    probe      frozen-feature probes (patch-level linear segmentation, ridge height)
    execute    run a stage's notebook with papermill and only its own params sections

Nothing here is part of the method or the training engines; the library below never
imports this package.
"""
