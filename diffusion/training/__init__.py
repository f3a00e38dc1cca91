"""The training loop and what it owns: the optimizer step, the epoch's batches, checkpoints with every rank's RNG
state, EMA and post-hoc EMA, the learning-rate schedule, the validation loss."""
