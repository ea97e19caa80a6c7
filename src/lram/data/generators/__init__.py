"""Data generators: one module per domain writes trajectories into task folders through a storage writer;
each has a ``main(argv)`` behind ``lram data generate <domain>`` (darkroom, metaworld, atari, dmcontrol, procgen
-- the last in ``procgen_gen``, because a module named ``procgen`` would shadow the simulator package)."""
