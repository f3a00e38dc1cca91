"""The user's jobs (train, distill, sample, evaluate, export, post-hoc EMA), each one module; no Hydra here."""
