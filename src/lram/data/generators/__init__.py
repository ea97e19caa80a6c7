"""Data generators: one module per domain writes trajectories into task folders through a storage writer;
each has a ``main(argv)`` behind ``lram data generate <domain>`` (darkroom, metaworld)."""
