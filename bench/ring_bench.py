"""Ring benchmark (see wsstls/ringbench.py): python bench/ring_bench.py [--json FILE]."""

import sys

from wsstls.ringbench import main

sys.exit(main())
