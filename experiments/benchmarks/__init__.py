"""Benchmarks that measure the package against a stated target: speed and memory (``speed/``), sample quality
against sampling cost, guidance, EDM and its solvers, distillation. Each writes its results beside itself."""
