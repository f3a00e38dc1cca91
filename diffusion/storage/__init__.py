"""What a run leaves on disk: checkpoints and their format, atomic writes, export, resume, the run lock, pictures."""
