"""The container's ENTRYPOINT: the same entry point as the `db-deploy` console script."""

import sys

from deployer.cli import console_main

sys.exit(console_main())
