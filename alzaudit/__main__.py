"""``python -m alzaudit``: the same as the ``alzaudit`` command."""
import sys

from alzaudit.cli import main

sys.exit(main())
