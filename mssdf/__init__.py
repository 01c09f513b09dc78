"""mssdf: Modality-Shared Self-supervised Distillation for multi-modal remote sensing.

Layout (one job per module; the arrows are the only import directions):

    the method      masking, pos_embed, model, losses, reference (per-patch NumPy reference)
    weights/        native (our safetensors), authors (their .pth layout), timm_export
    data/           fetch, prepare the sample (sources, tasks, index), readers of the paper datasets
    engine/         training infrastructure: DDP, sampler, optimiser, checkpoints, tracking, loop
    pretrain/       MSSDF pre-training on the engine (config, data, masks, step; CLI)
    downstream/     heads, fine-tuning and metrics of the downstream tasks (on the engine)
    reports/        what the notebooks show: plots, previews, probes, the stage runner

    shared          config (typed configs from params.yaml), modalities (the modality
                    catalogue), paths (repository-relative paths), atomic (atomic writes)

    data, the method  <-  weights, engine  <-  pretrain, downstream  <-  reports
"""

from mssdf._torchvision_compat import ensure_torchvision_importable

# timm (used by mssdf.model) imports torchvision; see _torchvision_compat for why.
TORCHVISION_STATE = ensure_torchvision_importable()

__version__ = "0.1.0"
