import sys

from prefloop.cli import main

sys.exit(main())
