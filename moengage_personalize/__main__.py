"""``python -m moengage_personalize``: the ``moengage-personalize`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
