"""``python -m al``: the study's command line (:mod:`al.study`)."""
import sys

from .study import main

sys.exit(main())
