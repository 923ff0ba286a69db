"""The container's ENTRYPOINT: the same entry point as the `db-deploy` console script."""

import sys

from deployer.supervise import main

sys.exit(main())
