"""Run many configs on per-GPU slots: python multi-run.py -c KEY -d N_0 N_1 ... -check false"""

import sys

from app.multi_run_cli import multi_run

if __name__ == "__main__":
    sys.exit(multi_run())
