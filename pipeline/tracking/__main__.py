"""python -m pipeline.tracking: log cells.csv to MLflow (pipeline.tracking.mlflow_sync)."""

import sys

from pipeline.tracking.mlflow_sync import main

sys.exit(main())
