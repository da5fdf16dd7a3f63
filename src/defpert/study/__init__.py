"""The study: ``dp``'s one config, ``run_dp`` as named stages, the result store, the
sweeps and ``reproduce``."""
