"""``python -m kerascomp``: the ``kerascomp`` command."""
import sys

from kerascomp.cli import main

sys.exit(main())
