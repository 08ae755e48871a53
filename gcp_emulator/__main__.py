import sys

from gcp_emulator.cli import main

sys.exit(main())
