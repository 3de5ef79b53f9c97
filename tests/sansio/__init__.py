"""The parsers, trackers and state machines with no I/O, on their own."""
