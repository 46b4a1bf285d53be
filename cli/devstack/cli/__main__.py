import sys

from devstack.cli.main import main

sys.exit(main())
