"""The process: argument checks, devices and precision, torch.distributed, threads, seeding, signals."""
