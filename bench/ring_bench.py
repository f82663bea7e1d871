"""Ring benchmark (see wsstls/measure/ringbench.py): python bench/ring_bench.py [--json FILE]."""

import sys

from wsstls.measure.ringbench import main

sys.exit(main())
