"""Speed and memory of the default run: the Trainer and the Sampler against bare loops, bf16, compile, FLOP/s,
resident memory, torchrun sampling (``python -m experiments.benchmarks.speed``), and two runs sharing a node's
CPUs (``python -m experiments.benchmarks.speed.threads``)."""
