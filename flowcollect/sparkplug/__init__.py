"""Sparkplug B 3.0: the payload schema, the encoder and decoder, and the edge node's session.

Private modules: ``SparkplugDataWriter`` (flowcollect.writers) is the public way in.
"""
