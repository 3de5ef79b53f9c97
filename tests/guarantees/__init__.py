"""The promise under attack: faults, forks, threads, Ctrl-C, aliasing, stale bytes, adversaries."""
