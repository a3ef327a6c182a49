"""``python -m craft`` runs the ``craft`` command."""
import sys

try:
    from craft.cli import main
except KeyboardInterrupt:  # Ctrl-C while starting up
    print("craft: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
