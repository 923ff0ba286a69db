"""The container's ENTRYPOINT: the same main() as the `db-deploy` console script."""

import sys

from deployer.cli import main

sys.exit(main())
