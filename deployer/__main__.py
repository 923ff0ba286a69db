"""`python -m deployer`: the same entry point as the `db-deploy` script and the container."""

import sys

from deployer.supervise import main

sys.exit(main())
