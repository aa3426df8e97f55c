"""``python -m dpfm.experiments``."""

import sys

from dpfm.experiments import main

sys.exit(main())
