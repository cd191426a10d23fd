"""The runtime: lanes (one thread and clock each), the named steps values pass through, and the
latest-value store of pushing readers. Internal: the public surface is ``DataCollector``."""
