"""`python -m sidecar` runs the same command line as `forestreet-sidecar`."""

from sidecar.cli import entry

entry()
