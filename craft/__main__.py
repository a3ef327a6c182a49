"""``python -m craft`` runs the ``craft`` command."""
import sys

from craft.cli import main

sys.exit(main())
