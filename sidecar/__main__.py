"""`python -m sidecar` runs the same command line as `forestreet-sidecar`."""

import sys

from sidecar.cli import main

sys.exit(main(sys.argv[1:]))
