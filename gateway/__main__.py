"""``python -m gateway``: the ``offload`` command."""

import sys

from gateway.main import main

sys.exit(main())
