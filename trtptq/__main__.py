import sys

from trtptq.cli import main

sys.exit(main())
