"""Parse a Ringfence /metrics answer with the Prometheus project's own Python client's
OpenMetrics parser (prometheus_client), which raises on anything malformed, and print every
sample as JSON: [[name, {labels}, value], ...]."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append([sample.name, dict(sample.labels), sample.value])
json.dump(samples, sys.stdout)
