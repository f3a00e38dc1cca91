"""The training loop and what it owns: EMA and post-hoc EMA, the learning-rate schedule, the validation loss."""
