"""`python -m liwi_diffusers`, the same as the `liwi` command."""

import sys

from .cli import main

sys.exit(main())
