"""``clp``: machine-ID contrastive learning (the default method).

1. stage 1, supervised contrastive (SupCon, temperature 0.1) on the encoder + a projection head;
   positives = windows of the same class;
2. stage 2, ArcFace fine-tuning of the encoder with an ID classifier (s=30, m=0.7);
in both stages a quarter of each batch is appended again, shifted by 4-12 mel bins, as extra
"shifted machine" classes (:func:`training.methods.common.position_negatives`).
"""

from __future__ import annotations

from soundwatch.model.networks import ArcMarginHead, Encoder
from training.methods.common import EncoderJob, arcface_stage, position_negatives, rounded, supcon_stage
from training.methods.encoder import EncoderMethod


def fit(job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    cfg = job.cfg
    encoder = job.new_encoder()
    epochs = cfg.stage_epochs()
    views = position_negatives(cfg.negative_fraction, job.n_labels)
    job.metrics["supcon_loss"] = rounded(
        supcon_stage(job, encoder, views, epochs=epochs, lr=cfg.supcon_lr, desc="clp stage 1 (SupCon)")
    )
    if job.n_classes < 2:
        return encoder, None
    head = arcface_stage(
        job,
        encoder,
        position_negatives(cfg.negative_fraction, job.n_classes),
        n_out=2 * job.n_classes,
        epochs=epochs,
        lr=cfg.arc_lr,
        desc="clp stage 2 (ArcFace)",
    )
    return encoder, head


METHOD = EncoderMethod(
    "clp",
    "machine-ID contrastive learning: SupCon then ArcFace, mel-shifted negatives (default)",
    fit,
)
