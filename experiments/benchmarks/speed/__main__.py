"""``python -m experiments.benchmarks.speed``: the whole speed and memory table (see :mod:`.benchmark`)."""

import sys

from experiments.benchmarks.speed.benchmark import main

sys.exit(main())
