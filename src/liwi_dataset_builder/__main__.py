"""``python -m liwi_dataset_builder``: the same as the ``liwi-build`` command."""

import sys

from .cli import main

sys.exit(main())
