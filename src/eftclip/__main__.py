import sys

from eftclip.cli import main

sys.exit(main())
