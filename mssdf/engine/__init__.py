"""Training infrastructure shared by pre-training and fine-tuning.

    distributed    torchrun process groups, DDP wrapping, collectives, seeding
    sampler        the world-size-independent global-batch sampler
    optim          AdamW parameter groups, warm-up + cosine schedules
    checkpointing  atomic, resumable training-state checkpoints (RNG states included)
    tracking       rank-0 metric sinks: history, tqdm bar, dvclive
    loop           resume (same-run check), the optimiser step and the step loop a task plugs into

A task (:mod:`mssdf.pretrain`, the downstream fine-tuning) supplies its model, data and
one ``step`` function; the loop does the rest.
"""
