import sys

from gclcore.data.cli import main

sys.exit(main())
