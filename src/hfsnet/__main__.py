import sys

from hfsnet.cli import main

sys.exit(main())
