"""Memory pressure and what to do about it: samplers, the governor, GC scheduling, cleanups."""
