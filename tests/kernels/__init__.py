"""Each kernel on the real Linux kernel over loopback, one file per kernel."""
