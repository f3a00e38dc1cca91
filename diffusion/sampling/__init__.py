"""Drawing samples from a trained model: the sampler and its one loop, the solvers, noise streams, guidance."""
