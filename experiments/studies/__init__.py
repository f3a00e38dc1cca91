"""One script per study (``python -m experiments.studies.<study>``); what they share is in
:mod:`experiments.studies.common`."""
