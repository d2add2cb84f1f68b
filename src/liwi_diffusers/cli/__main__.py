"""`python -m liwi_diffusers.cli`, the same as the `liwi` command."""

import sys

from . import main

sys.exit(main())
