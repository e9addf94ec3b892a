"""`meshctl dashboard`: the live service graph and per-workload golden signals, read from Prometheus."""
