"""`python -m deployer`: the same entry point as the `db-deploy` script and the container."""

import sys

from deployer.cli import console_main

sys.exit(console_main())
