"""Pretraining of the OneRec model: training samples, the training loop, checkpoints."""
from .checkpoint import (CheckpointError, IncompleteCheckpoint, codes_checksum, load_checkpoint,
                         save_checkpoint)
from .pretrain import (TrainConfig, TrainResult, Validator, load_trained, plot_metrics,
                       pretrain)
from .samples import SampleBatch, SampleStream, training_rows

__all__ = ["CheckpointError", "IncompleteCheckpoint", "codes_checksum", "load_checkpoint",
           "save_checkpoint", "TrainConfig", "TrainResult", "Validator", "load_trained",
           "plot_metrics", "pretrain", "SampleBatch", "SampleStream", "training_rows"]
