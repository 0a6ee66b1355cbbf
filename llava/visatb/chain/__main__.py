"""`python -m llava.visatb.chain`: the chain's command line (llava/visatb/chain/cli.py)."""

import sys

from llava.visatb.chain.cli import main

sys.exit(main())
