"""W3 task: a small Python program (stdlib imports, a little arithmetic, one JSON line out)."""
import hashlib
import json
import random
import statistics
import sys

seed = sys.argv[1] if len(sys.argv) > 1 else "0"
rng = random.Random(seed)
values = [rng.gauss(0.0, 1.0) for _ in range(20000)]
digest = hashlib.sha256()
for v in values[:5000]:
    digest.update(repr(v).encode())
print(json.dumps({"seed": seed, "mean": statistics.fmean(values),
                  "stdev": statistics.pstdev(values), "digest": digest.hexdigest()[:16]}))
