"""`python -m deployer`: the same main() as the `db-deploy` script and the container."""

import sys

from deployer.cli import main

sys.exit(main())
