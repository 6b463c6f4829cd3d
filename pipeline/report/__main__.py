"""python -m pipeline.report: render a comparison report (pipeline.report.render)."""

import sys

from pipeline.report.render import main

sys.exit(main())
