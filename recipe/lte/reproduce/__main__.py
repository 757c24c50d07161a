import sys

from recipe.lte.reproduce.cli import main

sys.exit(main())
